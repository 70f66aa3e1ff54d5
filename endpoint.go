package main

import (
	"net"
	"net/url"
	"strconv"
	"strings"
)

// DNS limits on a host name: the whole name and each of its labels.
const (
	maxHostLen  = 253
	maxLabelLen = 63
)

// normalizeEndpoint turns a user-given HOST, HOST:PORT or https://HOST[:PORT]
// into the canonical host[:port]: lower case, no trailing dot, no default
// port 443, the port written without leading zeros. One service has one
// spelling, so that nothing keyed by endpoint (the credential cache, the
// allow lists) can be filled or dodged by respelling it. Plain http and
// anything with a path, query or user info is refused: these endpoints
// receive attestation evidence and tokens.
func normalizeEndpoint(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", newError(kindInvalid, nil, "missing field %q", field)
	}
	// Bounded before parsing: nothing longer can be a host name, and the
	// input must not reach an error message or a log whole.
	if len(s) > len("https://")+maxHostLen+len(":65535/") {
		return "", newError(kindInvalid, nil, "field %q is longer than a host name can be (%d characters): %q", field, maxHostLen, bounded(s))
	}
	raw := s
	if !strings.Contains(s, "://") {
		raw = "https://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", newError(kindInvalid, nil, "field %q is not a host name with an optional :port: %q", field, bounded(s))
	}
	if !strings.EqualFold(u.Scheme, "https") {
		return "", newError(kindInvalid, nil, "field %q: scheme %q is refused, only https is allowed", field, bounded(u.Scheme))
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || u.Host == "" {
		return "", newError(kindInvalid, nil, "field %q must be a host name with an optional :port, got %q", field, bounded(s))
	}
	host, err := canonicalHost(u.Hostname())
	if err != nil {
		return "", newError(kindInvalid, err, "field %q", field)
	}
	port, err := canonicalPort(u.Port())
	if err != nil {
		return "", newError(kindInvalid, err, "field %q", field)
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == "" || port == "443" {
		return host, nil
	}
	return host + ":" + port, nil
}

// canonicalHost checks a host name against the DNS limits, or an IP
// address, and returns it in lower case without a trailing dot.
func canonicalHost(h string) (string, error) {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if ip := net.ParseIP(h); ip != nil {
		return ip.String(), nil
	}
	if h == "" || len(h) > maxHostLen {
		return "", newError(kindInvalid, nil, "a host name has 1 to %d characters, got %d", maxHostLen, len(h))
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > maxLabelLen {
			return "", newError(kindInvalid, nil, "host %q has an empty label or one longer than %d characters", bounded(h), maxLabelLen)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", newError(kindInvalid, nil, "host %q has a character a host name cannot have", bounded(h))
			}
		}
	}
	return h, nil
}

// canonicalPort refuses a port out of range or with leading zeros, which
// would otherwise be a second spelling of the same port.
func canonicalPort(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
		return "", newError(kindInvalid, nil, "bad port %q: want 1 to 65535 without leading zeros", bounded(p))
	}
	return p, nil
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
