package main

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
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
	Allow allowList `json:"allow"` // optional restrictions on what callers may ask for

	// warnings are mistakes that do not stop the sidecar, said at start.
	warnings []string
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
	for _, f := range unknownJSONFields(raw, reflect.TypeFor[SkrSideCarArgs](), "") {
		args.warnings = append(args.warnings, fmt.Sprintf("SkrSideCarArgs has an unknown field %q, which is ignored: check its spelling", f))
	}
	switch args.CertCache.EndpointType {
	case "", "AMD", "AzCache", "LocalTHIM":
	default:
		return nil, fmt.Errorf("SkrSideCarArgs: certcache.endpoint_type %q is not one of AMD, AzCache, LocalTHIM", bounded(args.CertCache.EndpointType))
	}
	if tee := strings.TrimSpace(args.CertCache.TEEType); tee != "" && !strings.EqualFold(tee, defaultAzCacheTEE) {
		if _, ok := parseProductLine(tee); !ok {
			return nil, fmt.Errorf("SkrSideCarArgs: certcache.tee_type %q is not one of SevSnpVM, Milan, Genoa, Turin", bounded(args.CertCache.TEEType))
		}
	}
	if err := args.Allow.check(); err != nil {
		return nil, err
	}
	return args, nil
}

// unknownJSONFields lists, by path (certcache.endpoint_typ), the members of
// the JSON object raw that the struct type t has no field for, matching
// names without regard to case as encoding/json does.
func unknownJSONFields(raw []byte, t reflect.Type, prefix string) []string {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return nil
	}
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.IsExported() && name != "-" {
			fields[strings.ToLower(cmp.Or(name, f.Name))] = f.Type
		}
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		ft, ok := fields[strings.ToLower(k)]
		switch {
		case !ok:
			out = append(out, prefix+bounded(k))
		case ft.Kind() == reflect.Struct:
			out = append(out, unknownJSONFields(obj[k], ft, prefix+k+".")...)
		}
	}
	return out
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
	ShutdownGrace             time.Duration // how long requests in flight may run on after a signal
	NoTCP                     bool          // -port 0: the Unix socket only
	Socket                    string        // path of a Unix socket to listen on too; "" = none
	SocketUIDs                []uint32      // peers the socket serves; nil = any that may open it
}

// serveFlags holds the settings of `skr serve` as given, before they are
// checked and turned into a serverConfig.
type serveFlags struct {
	base64   string
	port     int
	logLevel string
	logFile  string
	emulate  bool
	ttl      time.Duration

	serverType    string
	mismatchedTCB bool

	grace  time.Duration
	socket string
	uids   string
}

// noPositional marks a setting that skr.sh never passes as a positional
// argument.
const noPositional = -1

// serveSettings lists every setting of `skr serve`. A flag not given on the
// command line falls back to its environment variable, then (for the two
// settings skr.sh passes that way) to its positional argument.
var serveSettings = []serveSetting{
	setting[string]{flag: "base64", env: "SkrSideCarArgs", pos: 0, def: "",
		usage: "SkrSideCarArgs: base64 (standard) JSON (env SkrSideCarArgs)",
		field: func(f *serveFlags) *string { return &f.base64 }, parse: parseVerbatim},
	setting[int]{flag: "port", env: "Port", pos: 1, def: 8080,
		usage: "TCP port on loopback; 0 = no TCP, the -socket only (env Port)",
		field: func(f *serveFlags) *int { return &f.port }, parse: parsePortSetting},
	setting[string]{flag: "loglevel", env: "LogLevel", pos: noPositional, def: "warning",
		usage: "trace, debug, info, warning, error, fatal or panic (env LogLevel)",
		field: func(f *serveFlags) *string { return &f.logLevel }, parse: parseVerbatim},
	setting[string]{flag: "logfile", env: "LogFile", pos: noPositional, def: "",
		usage: "append logs to this file instead of stderr (env LogFile)",
		field: func(f *serveFlags) *string { return &f.logFile }, parse: parseVerbatim},
	setting[bool]{flag: "emulate", env: "SKR_EMULATE", pos: noPositional, def: false,
		usage: "use the software SNP emulator; its evidence is trusted by no real verifier (env SKR_EMULATE=1)",
		field: func(f *serveFlags) *bool { return &f.emulate }, parse: parseEmulateSetting},
	setting[time.Duration]{flag: "wrapping-key-ttl", env: "SKR_WRAPPING_KEY_TTL", pos: noPositional, def: 5 * time.Minute,
		usage: "how long a wrapping key and its MAA token serve further releases; 0 = fresh per release (env SKR_WRAPPING_KEY_TTL)",
		field: func(f *serveFlags) *time.Duration { return &f.ttl }, parse: parseTTLSetting},
	setting[string]{flag: "server_type", env: "ServerType", pos: noPositional, def: serverTypeHTTP,
		usage: "http (the REST API) or grpc (the key provider gRPC service; env ServerType)",
		field: func(f *serveFlags) *string { return &f.serverType }, parse: parseVerbatim},
	// Flag only: a testing switch must be visible on the command line.
	setting[bool]{flag: "allowTestingMismatchedTCB", env: "", pos: noPositional, def: false,
		usage: "TESTING ONLY: treat the container's platform certificates as not matching, so fresh ones are fetched for every report",
		field: func(f *serveFlags) *bool { return &f.mismatchedTCB }, parse: strconv.ParseBool},
	setting[time.Duration]{flag: "shutdown-grace", env: "SKR_SHUTDOWN_GRACE", pos: noPositional, def: defaultShutdownGrace,
		usage: "on SIGTERM or SIGINT, how long requests in flight may finish before they are answered 503; a second signal stops at once (env SKR_SHUTDOWN_GRACE)",
		field: func(f *serveFlags) *time.Duration { return &f.grace }, parse: durationSetting("SKR_SHUTDOWN_GRACE")},
	setting[string]{flag: "socket", env: "SKR_SOCKET", pos: noPositional, def: "",
		usage: "also listen on a Unix socket at this path, mode 0660, e.g. in a volume shared with one container (env SKR_SOCKET)",
		field: func(f *serveFlags) *string { return &f.socket }, parse: parseVerbatim},
	setting[string]{flag: "socket-uids", env: "SKR_SOCKET_UIDS", pos: noPositional, def: "",
		usage: "comma-separated user ids the -socket serves, checked by peer credentials; empty = any that may open it (env SKR_SOCKET_UIDS)",
		field: func(f *serveFlags) *string { return &f.uids }, parse: parseVerbatim},
}

// defaultShutdownGrace leaves a release that needs a fresh attestation
// time to finish, well within Kubernetes' default 30 s before SIGKILL.
const defaultShutdownGrace = 10 * time.Second

// durationSetting reads a duration from the environment variable env.
func durationSetting(env string) func(string) (time.Duration, error) {
	return func(v string) (time.Duration, error) {
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%s=%q is not a duration such as 10s: %w", env, v, err)
		}
		return d, nil
	}
}

func parseVerbatim(v string) (string, error) { return v, nil }

func parsePortSetting(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", v)
	}
	return n, nil
}

func parseEmulateSetting(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("SKR_EMULATE=%q is not a boolean", v)
	}
	return b, nil
}

func parseTTLSetting(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("SKR_WRAPPING_KEY_TTL=%q is not a duration such as 5m: %w", v, err)
	}
	return d, nil
}

// serveSetting is one row of serveSettings, whatever its type.
type serveSetting interface {
	declare(fs *flag.FlagSet, f *serveFlags)
	// fallback fills the setting from a value found in the environment or
	// among the positional arguments.
	fallback(f *serveFlags, v string) error
	flagName() string
	envName() string
	position() int
}

// setting is a serveSetting of type T. Its flag is declared with the flag
// package's own type, so -h and the flag errors read as usual; parse reads
// the same setting from the environment or a positional argument.
type setting[T string | int | bool | time.Duration] struct {
	flag, env string
	pos       int // index among skr.sh's positional arguments, or noPositional
	def       T
	usage     string
	field     func(*serveFlags) *T
	parse     func(string) (T, error)
}

func (s setting[T]) flagName() string { return s.flag }
func (s setting[T]) envName() string  { return s.env }
func (s setting[T]) position() int    { return s.pos }

func (s setting[T]) declare(fs *flag.FlagSet, f *serveFlags) {
	switch p := any(s.field(f)).(type) {
	case *string:
		fs.StringVar(p, s.flag, any(s.def).(string), s.usage)
	case *int:
		fs.IntVar(p, s.flag, any(s.def).(int), s.usage)
	case *bool:
		fs.BoolVar(p, s.flag, any(s.def).(bool), s.usage)
	case *time.Duration:
		fs.DurationVar(p, s.flag, any(s.def).(time.Duration), s.usage)
	}
}

func (s setting[T]) fallback(f *serveFlags, v string) error {
	x, err := s.parse(v)
	if err != nil {
		return err
	}
	*s.field(f) = x
	return nil
}

// parseServeFlags reads the flags, falling back to the environment for each
// flag not given, then to the skr.sh positional arguments (SkrSideCarArgs,
// Port).
func parseServeFlags(args []string, getenv func(string) string, stderr io.Writer) (*serverConfig, error) {
	var f serveFlags
	fs := newCommandFlags("skr serve", stderr,
		"Usage: skr [serve] [FLAGS] [SkrSideCarArgs [Port]]",
		"Runs the sidecar on 127.0.0.1 and ::1. Each flag falls back to its environment variable.")
	for _, s := range serveSettings {
		s.declare(fs, &f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	pos := fs.Args()
	if len(pos) > 2 {
		return nil, fmt.Errorf("too many arguments %q: want at most SkrSideCarArgs and Port", pos)
	}
	if err := applyFallbacks(fs, &f, getenv, pos); err != nil {
		return nil, err
	}
	return f.check()
}

// applyFallbacks fills each setting whose flag was not given from its
// environment variable, else from its positional argument.
func applyFallbacks(fs *flag.FlagSet, f *serveFlags, getenv func(string) string, pos []string) error {
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for _, s := range serveSettings {
		if given[s.flagName()] {
			continue
		}
		var v string
		if env := s.envName(); env != "" {
			v = getenv(env)
		}
		if i := s.position(); v == "" && i >= 0 && i < len(pos) {
			v = pos[i]
		}
		if v == "" {
			continue
		}
		if err := s.fallback(f, v); err != nil {
			return err
		}
	}
	return nil
}

// check validates the settings together and builds the serverConfig.
func (f *serveFlags) check() (*serverConfig, error) {
	if f.port < 0 || f.port > 65535 {
		return nil, fmt.Errorf("port %d is out of range", f.port)
	}
	if f.ttl < 0 {
		return nil, fmt.Errorf("wrapping-key-ttl %v is negative", f.ttl)
	}
	if f.grace < 0 {
		return nil, fmt.Errorf("shutdown-grace %v is negative", f.grace)
	}
	lvl, err := parseLogLevel(f.logLevel)
	if err != nil {
		return nil, err
	}
	st, err := parseServerType(f.serverType)
	if err != nil {
		return nil, err
	}
	skrArgs, err := parseSkrSideCarArgs(f.base64)
	if err != nil {
		return nil, err
	}
	cfg := &serverConfig{Args: skrArgs, Port: f.port, LogLevel: lvl, LogFile: f.logFile, Emulate: f.emulate, WrappingKeyTTL: f.ttl, ShutdownGrace: f.grace,
		ServerType: st, AllowTestingMismatchedTCB: f.mismatchedTCB,
		NoTCP: f.port == 0, Socket: strings.TrimSpace(f.socket)}
	if cfg.NoTCP && cfg.Socket == "" {
		return nil, fmt.Errorf("port 0 turns TCP off, and there is no -socket to listen on instead")
	}
	if cfg.SocketUIDs, err = parseUIDs(f.uids); err != nil {
		return nil, err
	}
	if cfg.SocketUIDs != nil && cfg.Socket == "" {
		return nil, fmt.Errorf("-socket-uids %s without -socket: there is no socket to restrict", f.uids)
	}
	return cfg, nil
}

// parseUIDs reads a comma-separated list of numeric user ids.
func parseUIDs(s string) ([]uint32, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var uids []uint32
	for _, field := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(field), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("socket-uids: %q is not a numeric user id", bounded(field))
		}
		uids = append(uids, uint32(n))
	}
	return uids, nil
}
