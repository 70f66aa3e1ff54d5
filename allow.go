package main

import (
	"fmt"
	"strings"
)

// Caller restrictions: the allow object of SkrSideCarArgs narrows what any
// process of the container group may ask for. Without it, every caller may
// release every key the identity reaches, from any vault.

// allowList is SkrSideCarArgs' allow object. An absent list does not
// restrict; a list that is present must name at least one entry.
type allowList struct {
	MAAEndpoints []string `json:"maa_endpoints"` // host[:port], as maa_endpoint is written
	AKVEndpoints []string `json:"akv_endpoints"` // host[:port], as akv_endpoint is written
	Kids         []string `json:"kids"`          // NAME (any version) or NAME/VERSION

	kids []keyRef // Kids, parsed
}

// check validates the lists and writes the endpoints in their canonical
// form, the one requests are compared in.
func (a *allowList) check() error {
	for _, l := range []struct {
		name string
		list []string
	}{{"maa_endpoints", a.MAAEndpoints}, {"akv_endpoints", a.AKVEndpoints}, {"kids", a.Kids}} {
		if l.list != nil && len(l.list) == 0 {
			return fmt.Errorf("SkrSideCarArgs: allow.%s is empty, which would refuse everything: leave it out to allow any, or list what is allowed", l.name)
		}
	}
	for _, list := range []struct {
		field string
		hosts []string
	}{{"allow.maa_endpoints", a.MAAEndpoints}, {"allow.akv_endpoints", a.AKVEndpoints}} {
		for i, h := range list.hosts {
			canon, err := normalizeEndpoint(list.field, h)
			if err != nil {
				return fmt.Errorf("SkrSideCarArgs: %w", err)
			}
			list.hosts[i] = canon
		}
	}
	a.kids = nil
	for _, k := range a.Kids {
		ref, err := parseKeyRef(k)
		if err != nil {
			return fmt.Errorf("SkrSideCarArgs: allow.kids: %w", err)
		}
		a.kids = append(a.kids, ref)
	}
	return nil
}

// permitMAA refuses an MAA endpoint that allow.maa_endpoints does not list.
func (a *allowList) permitMAA(host string) error {
	return permitHost("maa_endpoint", "maa_endpoints", host, a.MAAEndpoints)
}

// permitRelease refuses a release outside any of the lists.
func (a *allowList) permitRelease(p *keyReleaseParams) error {
	if err := a.permitMAA(p.MAAHost); err != nil {
		return err
	}
	if err := permitHost("akv_endpoint", "akv_endpoints", p.VaultHost, a.AKVEndpoints); err != nil {
		return err
	}
	if a.Kids == nil {
		return nil
	}
	for _, k := range a.kids {
		// A name allows every version; a pinned version only itself.
		if strings.EqualFold(k.Name, p.Key.Name) && (k.Version == "" || strings.EqualFold(k.Version, p.Key.Version)) {
			return nil
		}
	}
	return newError(kindDenied, nil, "kid %q is not allowed here: SkrSideCarArgs allow.kids lists %s", p.Key.String(), strings.Join(a.Kids, ", "))
}

func permitHost(field, list, host string, allowed []string) error {
	if allowed == nil {
		return nil
	}
	for _, h := range allowed {
		if h == host {
			return nil
		}
	}
	return newError(kindDenied, nil, "%s %s is not allowed here: SkrSideCarArgs allow.%s lists %s", field, host, list, strings.Join(allowed, ", "))
}
