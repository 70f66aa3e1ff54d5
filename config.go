package main

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// SkrSideCarArgs is the JSON carried base64-encoded in -base64 /
// SkrSideCarArgs. It is a superset of the upstream sidecar's fields.
type SkrSideCarArgs struct {
	CertCache certCacheConfig `json:"certcache"`
	Identity  struct {
		ClientID string `json:"client_id"`
	} `json:"identity"`
	MAAConfig struct {
		UserAgent string `json:"user_agent"`
	} `json:"maaconfig"`
}

// certCacheConfig says where fresh AMD certificates come from.
type certCacheConfig struct {
	EndpointType string `json:"endpoint_type"` // AMD | AzCache | LocalTHIM
	Endpoint     string `json:"endpoint"`      // host[/path]
	TEEType      string `json:"tee_type"`      // SevSnpVM | Milan | Genoa | Turin
	APIVersion   string `json:"api_version"`   // "api-version=..."
	ClientID     string `json:"client_id"`     // "clientId=..."
}

// parseSkrSideCarArgs decodes the base64 (standard) JSON. Empty means
// defaults everywhere.
func parseSkrSideCarArgs(b64 string) (*SkrSideCarArgs, error) {
	args := &SkrSideCarArgs{}
	b64 = strings.TrimSpace(b64)
	if b64 == "" {
		return args, nil
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("SkrSideCarArgs is not standard base64: %w", err)
	}
	if err := json.Unmarshal(raw, args); err != nil {
		return nil, fmt.Errorf("SkrSideCarArgs is not the expected JSON object: %w", err)
	}
	switch args.CertCache.EndpointType {
	case "", "AMD", "AzCache", "LocalTHIM":
	default:
		return nil, fmt.Errorf("SkrSideCarArgs: certcache.endpoint_type %q is not one of AMD, AzCache, LocalTHIM", args.CertCache.EndpointType)
	}
	return args, nil
}

// serverConfig is what the command line and environment say.
type serverConfig struct {
	Args           *SkrSideCarArgs
	Port           int
	LogLevel       slog.Level
	LogFile        string
	Emulate        bool
	WrappingKeyTTL time.Duration
	ServerType     string // serverTypeHTTP or serverTypeGRPC
	// AllowTestingMismatchedTCB treats the container's platform
	// certificates as never matching a report, so fresh ones are fetched.
	AllowTestingMismatchedTCB bool
}

// parseServeFlags reads the flags, falling back to the environment for each
// flag not given, then to the skr.sh positional arguments (SkrSideCarArgs,
// Port).
func parseServeFlags(args []string, getenv func(string) string, stderr io.Writer) (*serverConfig, error) {
	fs := flag.NewFlagSet("skr serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	b64 := fs.String("base64", "", "SkrSideCarArgs: base64 (standard) JSON (env SkrSideCarArgs)")
	port := fs.Int("port", 8080, "TCP port on loopback (env Port)")
	level := fs.String("loglevel", "warning", "trace, debug, info, warning, error, fatal or panic (env LogLevel)")
	logFile := fs.String("logfile", "", "append logs to this file instead of stderr (env LogFile)")
	emulate := fs.Bool("emulate", false, "use the software SNP emulator; its evidence is trusted by no real verifier (env SKR_EMULATE=1)")
	ttl := fs.Duration("wrapping-key-ttl", 5*time.Minute, "how long a wrapping key and its MAA token serve further releases; 0 = fresh per release (env SKR_WRAPPING_KEY_TTL)")
	serverType := fs.String("server_type", serverTypeHTTP, "http (the REST API) or grpc (the key provider gRPC service; env ServerType)")
	mismatchedTCB := fs.Bool("allowTestingMismatchedTCB", false, "TESTING ONLY: treat the container's platform certificates as not matching, so fresh ones are fetched for every report")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: skr [serve] [FLAGS] [SkrSideCarArgs [Port]]")
		fmt.Fprintln(stderr, "Runs the sidecar on 127.0.0.1 and ::1. Each flag falls back to its environment variable.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	pos := fs.Args()
	if len(pos) > 2 {
		return nil, fmt.Errorf("too many arguments %q: want at most SkrSideCarArgs and Port", pos)
	}

	// fallback fills a flag not given on the command line from its
	// environment variable, then from a positional argument.
	fallback := func(name, env string, posIndex int) (string, bool) {
		if set[name] {
			return "", false
		}
		if v := getenv(env); v != "" {
			return v, true
		}
		if posIndex >= 0 && posIndex < len(pos) && pos[posIndex] != "" {
			return pos[posIndex], true
		}
		return "", false
	}
	if v, ok := fallback("base64", "SkrSideCarArgs", 0); ok {
		*b64 = v
	}
	if v, ok := fallback("port", "Port", 1); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("port %q is not a number", v)
		}
		*port = n
	}
	if v, ok := fallback("loglevel", "LogLevel", -1); ok {
		*level = v
	}
	if v, ok := fallback("logfile", "LogFile", -1); ok {
		*logFile = v
	}
	if v, ok := fallback("emulate", "SKR_EMULATE", -1); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("SKR_EMULATE=%q is not a boolean", v)
		}
		*emulate = b
	}
	if v, ok := fallback("wrapping-key-ttl", "SKR_WRAPPING_KEY_TTL", -1); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, fmt.Errorf("SKR_WRAPPING_KEY_TTL=%q is not a duration such as 5m: %w", v, err)
		}
		*ttl = d
	}
	if v, ok := fallback("server_type", "ServerType", -1); ok {
		*serverType = v
	}
	st, err := parseServerType(*serverType)
	if err != nil {
		return nil, err
	}
	if *port < 0 || *port > 65535 {
		return nil, fmt.Errorf("port %d is out of range", *port)
	}
	if *ttl < 0 {
		return nil, fmt.Errorf("wrapping-key-ttl %v is negative", *ttl)
	}
	lvl, err := parseLogLevel(*level)
	if err != nil {
		return nil, err
	}
	skrArgs, err := parseSkrSideCarArgs(*b64)
	if err != nil {
		return nil, err
	}
	return &serverConfig{Args: skrArgs, Port: *port, LogLevel: lvl, LogFile: *logFile, Emulate: *emulate, WrappingKeyTTL: *ttl,
		ServerType: st, AllowTestingMismatchedTCB: *mismatchedTCB}, nil
}
