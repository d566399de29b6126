// Package config loads Atrium's configuration from ATRIUM_* environment
// variables into one struct, validates it, and prints it with secrets
// redacted. Each module receives only its own part of the struct.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/atriumhq/atrium/platform/keyring"
)

// Prefix is the prefix of every configuration variable.
const Prefix = "ATRIUM"

// Config is the whole configuration of one Atrium instance.
type Config struct {
	Env            string  `envconfig:"ENV" default:"production" desc:"development or production; development enables readable logs, migrations on start and non-Secure cookies"`
	InstanceID     string  `envconfig:"INSTANCE_ID" desc:"stable name of this instance in the cluster list (default: host name plus a random suffix)"`
	MigrateOnStart OptBool `envconfig:"MIGRATE_ON_START" desc:"apply pending migrations when serve starts (default: true in development, false in production)"`

	// MasterKey encrypts secrets at rest (signing keys); see platform/keyring.
	MasterKey string `envconfig:"MASTER_KEY" required:"true" secret:"true" desc:"keyring that encrypts signing keys at rest: base64 of 32 random bytes (head -c 32 /dev/urandom | base64), or id:base64 entries, comma-separated, current first"`

	HTTP     HTTP
	Database Database
	Redis    Redis
	Log      Log
	Auth     Auth
	Usage    Usage
	Payments Payments
	GPU      GPU
}

// GPU configures the GPU scheduler (modules/gpu).
type GPU struct {
	Backend          string        `envconfig:"BACKEND" default:"auto" desc:"how this instance reads its GPUs: nvml (the driver; fails if it does not load), mock (NVIDIA's simulated DGX A100, 8 GPUs), none (an API-only instance), auto (nvml when the driver loads, else none)"`
	Node             string        `envconfig:"NODE" desc:"this GPU node's stable name in the cluster (default: the host name); keep it across restarts so the node keeps its GPUs' allocations"`
	Policy           string        `envconfig:"POLICY" default:"least_loaded" desc:"placement policy of the scheduler: least_loaded (the least-loaded node first), binpack (fill used GPUs first) or spread (emptiest node first)"`
	RefreshInterval  time.Duration `envconfig:"REFRESH_INTERVAL" default:"2s" desc:"how often a GPU node reads its GPUs through NVML and publishes them in Redis"`
	NodeTTL          time.Duration `envconfig:"NODE_TTL" default:"10s" desc:"a node whose published inventory is this old is lost: its replicas are rescheduled (at least 3 x ATRIUM_GPU_REFRESH_INTERVAL)"`
	ScheduleInterval time.Duration `envconfig:"SCHEDULE_INTERVAL" default:"1s" desc:"how often the scheduler leader reconciles deployments and places pending replicas"`
	LeaseTTL         time.Duration `envconfig:"LEASE_TTL" default:"6s" desc:"the scheduler leader's lease: a leader that dies is replaced within this time"`
	MeterInterval    time.Duration `envconfig:"METER_INTERVAL" default:"15s" desc:"how often the leader meters the GPU time of allocated replicas into usage and the max_gpu_hours budget"`
	AdvertiseHost    string        `envconfig:"ADVERTISE_HOST" default:"127.0.0.1" desc:"the address this node's replicas listen on and every instance's router reaches them at (this host's cluster address when there is more than one host)"`
	ReplicaGrace     time.Duration `envconfig:"REPLICA_GRACE" default:"10s" desc:"how long a stopping replica gets between SIGTERM and SIGKILL"`
	LBStrategy       string        `envconfig:"LB_STRATEGY" default:"least_outstanding" desc:"how the inference router picks a replica within a version: least_outstanding, round_robin or weighted_response_time"`
	InferenceTimeout time.Duration `envconfig:"INFERENCE_TIMEOUT" default:"2m" desc:"bound on one inference request through the router, streaming included"`
	HoldTimeout      time.Duration `envconfig:"HOLD_TIMEOUT" default:"1m" desc:"how long an inference request waits for a replica when its deployment has none ready (scaled to zero, or starting)"`
	Commands         []string      `envconfig:"COMMANDS" default:"atrium,vllm" desc:"the programs a model version's command may start on GPU hosts, comma-separated (names looked up in PATH, or absolute paths): tenants choose the command, operators choose what it may run"`
}

// Payments configures the payment module (modules/payment).
type Payments struct {
	Channels         []string      `envconfig:"CHANNELS" desc:"bank channels, comma-separated name=base-URL entries in priority order (e.g. simbank=http://127.0.0.1:8090); empty: payments answer 503"`
	TestChannels     []string      `envconfig:"TEST_CHANNELS" desc:"the channels of test-mode terminals' payments (simulated banks), in the same form; test-mode payments go nowhere else and answer 503 when none is set"`
	CardKeys         string        `envconfig:"CARD_KEYS" secret:"true" desc:"keyring that seals card numbers (same form as ATRIUM_MASTER_KEY, current key first); default: ATRIUM_MASTER_KEY. After adding a key, run atrium payments rekey"`
	IdempotencyTTL   time.Duration `envconfig:"IDEMPOTENCY_TTL" default:"24h" desc:"how long an Idempotency-Key and its stored response are kept (at least 24h)"`
	TimeoutFloor     time.Duration `envconfig:"TIMEOUT_FLOOR" default:"50ms" desc:"lowest per-attempt timeout of a bank channel (the timeout is the channel's measured p99 x 1.5)"`
	TimeoutCeiling   time.Duration `envconfig:"TIMEOUT_CEILING" default:"5s" desc:"highest per-attempt timeout of a bank channel, and its timeout until enough calls are measured"`
	MaxConcurrent    uint          `envconfig:"MAX_CONCURRENT" default:"64" desc:"bulkhead: concurrent calls per bank channel per instance; excess is answered 503 with Retry-After at once"`
	CallTimeout      time.Duration `envconfig:"CALL_TIMEOUT" default:"20s" desc:"bound on one payment's or refund's bank calls, failover included, whatever the client does"`
	RecoverAfter     time.Duration `envconfig:"RECOVER_AFTER" default:"60s" desc:"age at which a payment still processing is resolved by asking the bank, and at which the bank's 'no such charge' is believed (at least ATRIUM_PAYMENTS_CALL_TIMEOUT + 5s)"`
	RecoveryInterval time.Duration `envconfig:"RECOVERY_INTERVAL" default:"5s" desc:"how often the recovery leader looks for payments and refunds to resolve"`
}

// CardKeyring is the keyring card numbers are sealed with.
func (c Config) CardKeyring() (*keyring.Keyring, error) {
	if c.Payments.CardKeys != "" {
		return keyring.Parse(c.Payments.CardKeys)
	}
	return keyring.Parse(c.MasterKey)
}

// Usage configures usage metering (modules/quota/metering.go).
type Usage struct {
	PushInterval  time.Duration `envconfig:"PUSH_INTERVAL" default:"1s" desc:"how often an instance pushes its usage counts from memory to Redis; an instance that dies loses at most this much of its counts"`
	FlushInterval time.Duration `envconfig:"FLUSH_INTERVAL" default:"10s" desc:"how often each instance flushes usage counts from Redis to PostgreSQL; losing Redis loses at most this much (plus the push interval) of counts"`
}

// Auth configures authentication: tokens, sessions and signing keys.
type Auth struct {
	Issuer      string        `envconfig:"ISSUER" default:"atrium" desc:"iss claim of tokens and the OpenID issuer; set it to Atrium's public base URL"`
	Audience    string        `envconfig:"AUDIENCE" default:"atrium-api" desc:"aud claim of access tokens"`
	AccessTTL   time.Duration `envconfig:"ACCESS_TTL" default:"10m" desc:"lifetime of an access token (JWT)"`
	SessionIdle time.Duration `envconfig:"SESSION_IDLE" default:"30m" desc:"a session whose refresh token is not used for this long ends (renewal window)"`
	SessionMax  time.Duration `envconfig:"SESSION_MAX" default:"12h" desc:"absolute lifetime of a login session, however often it is renewed"`
	KeyRotation time.Duration `envconfig:"KEY_ROTATION" default:"720h" desc:"age at which the current signing key is replaced (720h = 30 days)"`
}

// HTTP configures the HTTP edge.
type HTTP struct {
	Addr           string        `envconfig:"ADDR" default:":8080" desc:"listen address of the HTTP server"`
	TrustedProxies []string      `envconfig:"TRUSTED_PROXIES" desc:"comma-separated CIDRs of load balancers whose X-Forwarded-For is believed"`
	BodyLimit      int64         `envconfig:"BODY_LIMIT" default:"1048576" desc:"largest accepted request body in bytes"`
	RequestTimeout time.Duration `envconfig:"REQUEST_TIMEOUT" default:"30s" desc:"deadline of one API request"`
	ShutdownGrace  time.Duration `envconfig:"SHUTDOWN_GRACE" default:"25s" desc:"time in-flight requests get to finish after SIGTERM"`
}

// Database configures PostgreSQL, the system of record.
type Database struct {
	URL            string        `envconfig:"URL" required:"true" secret:"true" desc:"PostgreSQL connection URL (postgres://user:pass@host:5432/db)"`
	MaxConns       int32         `envconfig:"MAX_CONNS" default:"20" desc:"maximum connections in the pool"`
	ConnectTimeout time.Duration `envconfig:"CONNECT_TIMEOUT" default:"60s" desc:"how long serve retries an unreachable database at start before exiting"`
}

// Redis configures Redis, the shared run-time state.
type Redis struct {
	URL     string        `envconfig:"URL" required:"true" secret:"true" desc:"Redis URL (redis://[:pass@]host:6379/0)"`
	Prefix  string        `envconfig:"PREFIX" default:"atrium" desc:"prefix of every Redis key and channel (lets several deployments share one Redis)"`
	Timeout time.Duration `envconfig:"TIMEOUT" default:"500ms" desc:"read and write timeout of one Redis command"`
}

// Log configures logging.
type Log struct {
	Level  string `envconfig:"LEVEL" default:"info" desc:"debug, info, warn or error"`
	Format string `envconfig:"FORMAT" default:"auto" desc:"json, console, or auto (console on a terminal in development, else json)"`
}

// Development reports whether the instance runs in development mode.
func (c Config) Development() bool { return c.Env == "development" }

// ShouldMigrateOnStart reports whether serve applies pending migrations.
func (c Config) ShouldMigrateOnStart() bool {
	if c.MigrateOnStart.Set {
		return c.MigrateOnStart.Value
	}
	return c.Development()
}

// Error is a configuration error naming the variable at fault.
type Error struct {
	Var     string
	Problem string
}

func (e *Error) Error() string { return e.Var + ": " + e.Problem }

// Load reads the configuration from the process environment. Every secret
// variable X may instead be given as X_FILE, the path of a file holding it.
// The returned error is an *Error naming the variable when it can.
func Load() (Config, error) {
	var c Config
	fromFiles, err := readSecretFiles(&c)
	// A secret read from X_FILE is in the environment only while Load runs:
	// child processes must not inherit it, and a second Load must again see
	// X_FILE alone rather than X and X_FILE together.
	defer func() {
		for _, k := range fromFiles {
			_ = os.Unsetenv(k)
		}
	}()
	if err != nil {
		return c, err
	}
	vars, err := Vars(&c)
	if err != nil {
		return c, err
	}
	for _, v := range vars {
		if v.Required && os.Getenv(v.Key) == "" {
			problem := "is required but not set"
			if v.Secret {
				problem += " (or set it through " + v.Key + "_FILE)"
			}
			return c, &Error{Var: v.Key, Problem: problem}
		}
	}
	if err := envconfig.Process(Prefix, &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			want, ok := typeNames[pe.TypeName]
			if !ok {
				want = pe.TypeName
			}
			return c, &Error{Var: pe.KeyName, Problem: fmt.Sprintf("cannot parse %q: expected %s", pe.Value, want)}
		}
		return c, err
	}
	return c, c.Validate()
}

// typeNames says in words what each field type expects.
var typeNames = map[string]string{
	"config.OptBool": "a boolean (true or false)",
	"bool":           "a boolean (true or false)",
	"time.Duration":  "a duration such as 500ms, 30s or 5m",
	"int32":          "an integer",
	"int64":          "an integer",
	"int":            "an integer",
}

// readSecretFiles sets X from the file named by X_FILE for every secret X
// that is not set directly, before envconfig runs. It returns the variables
// it set, even with an error, so that Load can unset them again.
func readSecretFiles(c *Config) (set []string, err error) {
	vars, err := Vars(c)
	if err != nil {
		return nil, err
	}
	for _, v := range vars {
		if !v.Secret {
			continue
		}
		path, ok := os.LookupEnv(v.Key + "_FILE")
		if !ok {
			continue
		}
		if _, direct := os.LookupEnv(v.Key); direct {
			return set, &Error{Var: v.Key + "_FILE", Problem: "set together with " + v.Key + "; set only one"}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return set, &Error{Var: v.Key + "_FILE", Problem: "cannot read file: " + err.Error()}
		}
		if err := os.Setenv(v.Key, strings.TrimRight(string(b), "\r\n")); err != nil {
			return set, err
		}
		set = append(set, v.Key)
	}
	return set, nil
}

// Validate checks values that parse but make no sense.
func (c Config) Validate() error {
	switch c.Env {
	case "development", "production":
	default:
		return &Error{Var: "ATRIUM_ENV", Problem: fmt.Sprintf("must be development or production, got %q", c.Env)}
	}
	if _, _, err := net.SplitHostPort(c.HTTP.Addr); err != nil {
		return &Error{Var: "ATRIUM_HTTP_ADDR", Problem: fmt.Sprintf("must be host:port or :port, got %q", c.HTTP.Addr)}
	}
	for _, p := range c.HTTP.TrustedProxies {
		if _, _, err := net.ParseCIDR(strings.TrimSpace(p)); err != nil {
			return &Error{Var: "ATRIUM_HTTP_TRUSTED_PROXIES", Problem: fmt.Sprintf("%q is not a CIDR such as 10.0.0.0/8", p)}
		}
	}
	if c.HTTP.BodyLimit < 1024 {
		return &Error{Var: "ATRIUM_HTTP_BODY_LIMIT", Problem: "must be at least 1024 bytes"}
	}
	if c.HTTP.RequestTimeout <= 0 {
		return &Error{Var: "ATRIUM_HTTP_REQUEST_TIMEOUT", Problem: "must be a positive duration such as 30s"}
	}
	if c.HTTP.ShutdownGrace < 0 {
		return &Error{Var: "ATRIUM_HTTP_SHUTDOWN_GRACE", Problem: "must not be negative"}
	}
	if u, err := url.Parse(c.Database.URL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return &Error{Var: "ATRIUM_DATABASE_URL", Problem: "must be a postgres:// URL"}
	}
	if c.Database.MaxConns < 2 {
		return &Error{Var: "ATRIUM_DATABASE_MAX_CONNS", Problem: "must be at least 2"}
	}
	if u, err := url.Parse(c.Redis.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
		return &Error{Var: "ATRIUM_REDIS_URL", Problem: "must be a redis:// or rediss:// URL"}
	}
	if c.Redis.Prefix == "" || strings.ContainsAny(c.Redis.Prefix, " :*") {
		return &Error{Var: "ATRIUM_REDIS_PREFIX", Problem: "must be a non-empty word without spaces, ':' or '*'"}
	}
	if c.Redis.Timeout <= 0 {
		return &Error{Var: "ATRIUM_REDIS_TIMEOUT", Problem: "must be a positive duration such as 500ms"}
	}
	if _, err := keyring.Parse(c.MasterKey); err != nil {
		return &Error{Var: "ATRIUM_MASTER_KEY", Problem: err.Error()}
	}
	if c.Auth.Issuer == "" {
		return &Error{Var: "ATRIUM_AUTH_ISSUER", Problem: "must not be empty"}
	}
	if c.Auth.Audience == "" {
		return &Error{Var: "ATRIUM_AUTH_AUDIENCE", Problem: "must not be empty"}
	}
	if c.Auth.AccessTTL < time.Minute || c.Auth.AccessTTL > time.Hour {
		return &Error{Var: "ATRIUM_AUTH_ACCESS_TTL", Problem: "must be between 1m and 1h"}
	}
	if c.Auth.SessionIdle < time.Minute || c.Auth.SessionMax < c.Auth.SessionIdle {
		return &Error{Var: "ATRIUM_AUTH_SESSION_IDLE", Problem: "must be at least 1m and not above ATRIUM_AUTH_SESSION_MAX"}
	}
	if c.Auth.KeyRotation < time.Hour {
		return &Error{Var: "ATRIUM_AUTH_KEY_ROTATION", Problem: "must be at least 1h"}
	}
	if c.Usage.PushInterval < 100*time.Millisecond || c.Usage.PushInterval > 10*time.Second {
		return &Error{Var: "ATRIUM_USAGE_PUSH_INTERVAL", Problem: "must be between 100ms and 10s"}
	}
	if c.Usage.FlushInterval < time.Second || c.Usage.FlushInterval > time.Hour {
		return &Error{Var: "ATRIUM_USAGE_FLUSH_INTERVAL", Problem: "must be between 1s and 1h"}
	}
	if c.Payments.CardKeys != "" {
		if _, err := keyring.Parse(c.Payments.CardKeys); err != nil {
			return &Error{Var: "ATRIUM_PAYMENTS_CARD_KEYS", Problem: err.Error()}
		}
	}
	switch c.GPU.Backend {
	case "auto", "nvml", "mock", "none":
	default:
		return &Error{Var: "ATRIUM_GPU_BACKEND", Problem: "must be auto, nvml, mock or none"}
	}
	switch c.GPU.Policy {
	case "least_loaded", "binpack", "spread":
	default:
		return &Error{Var: "ATRIUM_GPU_POLICY", Problem: "must be least_loaded, binpack or spread"}
	}
	for _, d := range []struct {
		v  string
		d  time.Duration
		lo time.Duration
	}{{"ATRIUM_GPU_REFRESH_INTERVAL", c.GPU.RefreshInterval, 100 * time.Millisecond}, {"ATRIUM_GPU_SCHEDULE_INTERVAL", c.GPU.ScheduleInterval, 50 * time.Millisecond},
		{"ATRIUM_GPU_LEASE_TTL", c.GPU.LeaseTTL, time.Second}, {"ATRIUM_GPU_METER_INTERVAL", c.GPU.MeterInterval, time.Second}} {
		if d.d < d.lo || d.d > time.Hour {
			return &Error{Var: d.v, Problem: fmt.Sprintf("must be between %s and 1h", d.lo)}
		}
	}
	switch c.GPU.LBStrategy {
	case "least_outstanding", "round_robin", "weighted_response_time":
	default:
		return &Error{Var: "ATRIUM_GPU_LB_STRATEGY", Problem: "must be least_outstanding, round_robin or weighted_response_time"}
	}
	if net.ParseIP(c.GPU.AdvertiseHost) == nil && !validHostname(c.GPU.AdvertiseHost) {
		return &Error{Var: "ATRIUM_GPU_ADVERTISE_HOST", Problem: "must be an IP address or a host name"}
	}
	for _, d := range []struct {
		v      string
		d      time.Duration
		lo, hi time.Duration
	}{{"ATRIUM_GPU_REPLICA_GRACE", c.GPU.ReplicaGrace, 0, 10 * time.Minute}, {"ATRIUM_GPU_INFERENCE_TIMEOUT", c.GPU.InferenceTimeout, time.Second, time.Hour},
		{"ATRIUM_GPU_HOLD_TIMEOUT", c.GPU.HoldTimeout, 0, 10 * time.Minute}} {
		if d.d < d.lo || d.d > d.hi {
			return &Error{Var: d.v, Problem: fmt.Sprintf("must be between %s and %s", d.lo, d.hi)}
		}
	}
	if len(c.GPU.Commands) == 0 {
		return &Error{Var: "ATRIUM_GPU_COMMANDS", Problem: "must name at least one program"}
	}
	for _, p := range c.GPU.Commands {
		if p == "" || strings.ContainsAny(p, " \t") {
			return &Error{Var: "ATRIUM_GPU_COMMANDS", Problem: fmt.Sprintf("%q is not a program name or path", p)}
		}
	}
	if c.GPU.NodeTTL < 3*c.GPU.RefreshInterval {
		return &Error{Var: "ATRIUM_GPU_NODE_TTL", Problem: "must be at least 3 x ATRIUM_GPU_REFRESH_INTERVAL"}
	}
	if c.Payments.IdempotencyTTL < 24*time.Hour {
		return &Error{Var: "ATRIUM_PAYMENTS_IDEMPOTENCY_TTL", Problem: "must be at least 24h"}
	}
	if c.Payments.TimeoutFloor < time.Millisecond || c.Payments.TimeoutCeiling < c.Payments.TimeoutFloor {
		return &Error{Var: "ATRIUM_PAYMENTS_TIMEOUT_CEILING", Problem: "must not be below ATRIUM_PAYMENTS_TIMEOUT_FLOOR (at least 1ms)"}
	}
	if c.Payments.MaxConcurrent == 0 {
		return &Error{Var: "ATRIUM_PAYMENTS_MAX_CONCURRENT", Problem: "must be at least 1"}
	}
	if c.Payments.CallTimeout < time.Second || c.Payments.CallTimeout > 5*time.Minute {
		return &Error{Var: "ATRIUM_PAYMENTS_CALL_TIMEOUT", Problem: "must be between 1s and 5m"}
	}
	if c.Payments.RecoverAfter < c.Payments.CallTimeout+5*time.Second {
		return &Error{Var: "ATRIUM_PAYMENTS_RECOVER_AFTER", Problem: "must be at least ATRIUM_PAYMENTS_CALL_TIMEOUT (the longest a bank call runs) + 5s"}
	}
	if c.Payments.RecoveryInterval < 100*time.Millisecond {
		return &Error{Var: "ATRIUM_PAYMENTS_RECOVERY_INTERVAL", Problem: "must be at least 100ms"}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return &Error{Var: "ATRIUM_LOG_LEVEL", Problem: fmt.Sprintf("must be debug, info, warn or error, got %q", c.Log.Level)}
	}
	switch c.Log.Format {
	case "auto", "json", "console":
	default:
		return &Error{Var: "ATRIUM_LOG_FORMAT", Problem: fmt.Sprintf("must be auto, json or console, got %q", c.Log.Format)}
	}
	return nil
}

// Var describes one configuration variable.
type Var struct {
	Key      string
	Default  string
	Required bool
	Secret   bool
	Desc     string
	Value    string
}

// varsTemplate asks envconfig itself to list the variables, so that the key
// names here are exactly the ones Load reads.
const varsTemplate = "{{range .}}{{.Key}}\x1f{{.Tags.Get \"default\"}}\x1f{{.Tags.Get \"required\"}}\x1f{{.Tags.Get \"secret\"}}\x1f{{.Tags.Get \"desc\"}}\x1f{{.Field}}\x1e{{end}}"

// Vars lists every configuration variable with its current value in c.
func Vars(c *Config) ([]Var, error) {
	var buf bytes.Buffer
	if err := envconfig.Usagef(Prefix, c, &buf, varsTemplate); err != nil {
		return nil, err
	}
	var out []Var
	for _, rec := range strings.Split(buf.String(), "\x1e") {
		if rec == "" {
			continue
		}
		f := strings.Split(rec, "\x1f")
		if len(f) != 6 {
			return nil, fmt.Errorf("config: unexpected usage record %q", rec)
		}
		out = append(out, Var{Key: f[0], Default: f[1], Required: f[2] == "true", Secret: f[3] == "true", Desc: f[4], Value: f[5]})
	}
	return out, nil
}

// Dump writes the effective configuration, one variable a line, with secret
// values redacted.
func Dump(c Config, w io.Writer) error {
	vars, err := Vars(&c)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, v := range vars {
		val := strings.Trim(v.Value, "[]") // slices print as [a b]
		switch {
		case val == "":
			val = "(unset)"
		case v.Secret && strings.HasSuffix(v.Key, "_URL"):
			val = redactURL(val)
		case v.Secret:
			val = "***"
		}
		fmt.Fprintf(tw, "%s\t%s\n", v.Key, val)
	}
	return tw.Flush()
}

// redactURL hides the secret parts of a connection URL, keeping scheme,
// host and path, which help when debugging and are not secret; a value that
// does not parse as a URL with a host becomes "***".
func redactURL(v string) string {
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		return "***"
	}
	if _, hasPass := u.User.Password(); hasPass {
		u.User = url.UserPassword(u.User.Username(), "xxx")
	}
	u.RawQuery = ""
	return u.String()
}

// OptBool is a boolean that remembers whether it was set at all, so that its
// default can depend on other settings.
type OptBool struct {
	Set   bool
	Value bool
}

// Decode implements envconfig.Decoder.
func (b *OptBool) Decode(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b = OptBool{Set: true, Value: v}
	return nil
}

// String prints the value, or nothing when unset.
func (b OptBool) String() string {
	if !b.Set {
		return ""
	}
	return strconv.FormatBool(b.Value)
}

// validHostname reports whether h is a DNS host name (RFC 1123 labels).
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				return false
			}
		}
	}
	return true
}
