package main

import (
	"net"
	"net/url"
	"strconv"
	"strings"
)

// normalizeEndpoint turns a user-given HOST, HOST:PORT or https://HOST[:PORT]
// into a bare host[:port]. Plain http and anything with a path, query or user
// info is refused: these endpoints receive attestation evidence and tokens.
func normalizeEndpoint(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", newError(kindInvalid, nil, "missing field %q", field)
	}
	raw := s
	if !strings.Contains(s, "://") {
		raw = "https://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", newError(kindInvalid, err, "field %q is not a host name", field)
	}
	if u.Scheme != "https" {
		return "", newError(kindInvalid, nil, "field %q: scheme %q is refused, only https is allowed", field, u.Scheme)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Host == "" {
		return "", newError(kindInvalid, nil, "field %q must be a host name with an optional :port, got %q", field, s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", newError(kindInvalid, nil, "field %q has a bad port %q", field, p)
		}
	}
	return strings.ToLower(u.Host), nil
}

// hostName is the host name in host[:port][/path], for comparing hosts and
// matching them against names and suffixes: without port, IPv6 brackets,
// surrounding space, upper case or the trailing dot of a fully qualified
// name.
func hostName(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	s, _, _ = strings.Cut(s, "/")
	if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	}
	return strings.TrimSuffix(strings.Trim(s, "[]"), ".")
}
