package config_test

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/atriumhq/atrium/platform/config"
)

const (
	testDatabaseURL = "postgres://atrium@127.0.0.1:5432/atrium"
	testRedisURL    = "redis://127.0.0.1:6379/0"
	// testMasterKey is base64 of the 32 bytes 0x00..0x1f.
	testMasterKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	// otherMasterKey is base64 of 32 bytes whose encoding contains "s3cret",
	// so the tests' "s3cret" checks catch it if it is ever printed.
	otherMasterKey = "s3cretKEYs3cretKEYs3cretKEYs3cretKEYs3cretA="
	// shortMasterKey is base64 of 16 bytes: valid base64, wrong length.
	shortMasterKey = "s3cretKEYs3cretKEYs3cQ=="
)

// unset in an env map means "remove the variable" rather than "set it empty".
const unset = "\x00unset"

// setEnv gives the test an environment in which every variable config reads,
// and the _FILE form of each, is unset, then applies the three required
// variables (ATRIUM_DATABASE_URL, ATRIUM_REDIS_URL, ATRIUM_MASTER_KEY) and env
// on top. t.Setenv records every variable first, so its
// cleanup restores the caller's environment whatever Load or the test did.
func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	vars, err := config.Vars(&config.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		for _, k := range []string{v.Key, v.Key + "_FILE"} {
			t.Setenv(k, "")
			if err := os.Unsetenv(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	all := map[string]string{"ATRIUM_DATABASE_URL": testDatabaseURL, "ATRIUM_REDIS_URL": testRedisURL, "ATRIUM_MASTER_KEY": testMasterKey}
	for k, v := range env {
		all[k] = v
	}
	for k, v := range all {
		t.Setenv(k, "") // registers k for restoration even if it is unset below
		if v == unset {
			if err := os.Unsetenv(k); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Setenv(k, v)
	}
}

// load runs config.Load in an environment prepared by setEnv.
func load(t *testing.T, env map[string]string) (config.Config, error) {
	t.Helper()
	setEnv(t, env)
	return config.Load()
}

// wantError fails t unless err is a *config.Error naming variable with a
// problem containing problem.
func wantError(t *testing.T, err error, variable, problem string) {
	t.Helper()
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("got error %v (%T), want a *config.Error naming %s", err, err, variable)
	}
	if cerr.Var != variable {
		t.Errorf("error names %s, want %s (error: %v)", cerr.Var, variable, err)
	}
	if !strings.Contains(cerr.Problem, problem) {
		t.Errorf("problem %q, want it to contain %q", cerr.Problem, problem)
	}
	if !strings.HasPrefix(err.Error(), variable+": ") {
		t.Errorf("message %q does not start with the variable name", err.Error())
	}
}

func TestLoadDefaults(t *testing.T) {
	c, err := load(t, nil)
	if err != nil {
		t.Fatalf("Load with only the required variables: %v", err)
	}
	want := config.Config{
		Env:       "production",
		MasterKey: testMasterKey,
		HTTP: config.HTTP{
			Addr:           ":8080",
			BodyLimit:      1 << 20,
			RequestTimeout: 30 * time.Second,
			ShutdownGrace:  25 * time.Second,
		},
		Database: config.Database{URL: testDatabaseURL, MaxConns: 20, ConnectTimeout: 60 * time.Second},
		Redis:    config.Redis{URL: testRedisURL, Prefix: "atrium", Timeout: 500 * time.Millisecond},
		Log:      config.Log{Level: "info", Format: "auto"},
		Auth: config.Auth{
			Issuer:      "atrium",
			Audience:    "atrium-api",
			AccessTTL:   10 * time.Minute,
			SessionIdle: 30 * time.Minute,
			SessionMax:  12 * time.Hour,
			KeyRotation: 30 * 24 * time.Hour,
		},
		Usage: config.Usage{PushInterval: time.Second, FlushInterval: 10 * time.Second},
		Payments: config.Payments{
			IdempotencyTTL:   24 * time.Hour,
			TimeoutFloor:     50 * time.Millisecond,
			TimeoutCeiling:   5 * time.Second,
			MaxConcurrent:    64,
			CallTimeout:      20 * time.Second,
			RecoverAfter:     time.Minute,
			RecoveryInterval: 5 * time.Second,
		},
		GPU: config.GPU{Backend: "auto", Policy: "least_loaded", RefreshInterval: 2 * time.Second, NodeTTL: 10 * time.Second,
			ScheduleInterval: time.Second, LeaseTTL: 6 * time.Second, MeterInterval: 15 * time.Second, AdvertiseHost: "127.0.0.1",
			ReplicaGrace: 10 * time.Second, LBStrategy: "least_outstanding", InferenceTimeout: 2 * time.Minute, HoldTimeout: time.Minute,
			Commands: []string{"atrium", "vllm"}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load() =\n%+v\nwant\n%+v", c, want)
	}
	if c.Development() || c.ShouldMigrateOnStart() {
		t.Errorf("defaults: Development() = %v, ShouldMigrateOnStart() = %v; want production without migrations on start",
			c.Development(), c.ShouldMigrateOnStart())
	}
}

func TestLoadRequired(t *testing.T) {
	for _, key := range []string{"ATRIUM_DATABASE_URL", "ATRIUM_REDIS_URL", "ATRIUM_MASTER_KEY"} {
		for _, value := range []string{unset, ""} {
			name := key + "/unset"
			if value == "" {
				name = key + "/empty"
			}
			t.Run(name, func(t *testing.T) {
				_, err := load(t, map[string]string{key: value})
				wantError(t, err, key, "is required but not set")
			})
		}
	}
}

// TestRequiredHint checks that the "set it through X_FILE" hint appears for
// a missing required variable exactly when X may come from a file.
func TestRequiredHint(t *testing.T) {
	vars, err := config.Vars(&config.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if !v.Required {
			continue
		}
		t.Run(v.Key, func(t *testing.T) {
			_, err := load(t, map[string]string{v.Key: unset})
			var cerr *config.Error
			if !errors.As(err, &cerr) || cerr.Var != v.Key {
				t.Fatalf("got %v, want a *config.Error naming %s", err, v.Key)
			}
			hint := strings.Contains(cerr.Problem, v.Key+"_FILE")
			if hint != v.Secret {
				t.Errorf("secret=%v but the problem %q mentions %s_FILE: %v", v.Secret, cerr.Problem, v.Key, hint)
			}
		})
	}
}

func TestLoadUnparsable(t *testing.T) {
	for _, tc := range []struct {
		key, value, want string
	}{
		{"ATRIUM_HTTP_REQUEST_TIMEOUT", "soon", "expected a duration such as 500ms, 30s or 5m"},
		{"ATRIUM_HTTP_SHUTDOWN_GRACE", "25", "expected a duration"},
		{"ATRIUM_DATABASE_CONNECT_TIMEOUT", "1 minute", "expected a duration"},
		{"ATRIUM_REDIS_TIMEOUT", "fast", "expected a duration"},
		{"ATRIUM_HTTP_BODY_LIMIT", "1MB", "expected an integer"},
		{"ATRIUM_DATABASE_MAX_CONNS", "many", "expected an integer"},
		{"ATRIUM_DATABASE_MAX_CONNS", "3000000000", "expected an integer"}, // overflows int32
		{"ATRIUM_MIGRATE_ON_START", "maybe", "expected a boolean (true or false)"},
		{"ATRIUM_MIGRATE_ON_START", "", "expected a boolean"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			_, err := load(t, map[string]string{tc.key: tc.value})
			wantError(t, err, tc.key, tc.want)
			if !strings.Contains(err.Error(), `"`+tc.value+`"`) {
				t.Errorf("message %q does not quote the value %q", err.Error(), tc.value)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantVar string // "" when the configuration is valid
		problem string
	}{
		{"development", map[string]string{"ATRIUM_ENV": "development"}, "", ""},
		{"env unknown", map[string]string{"ATRIUM_ENV": "staging"}, "ATRIUM_ENV", `must be development or production, got "staging"`},
		{"env empty", map[string]string{"ATRIUM_ENV": ""}, "ATRIUM_ENV", "must be development or production"},

		{"addr host and port", map[string]string{"ATRIUM_HTTP_ADDR": "127.0.0.1:0"}, "", ""},
		{"addr without port", map[string]string{"ATRIUM_HTTP_ADDR": "8080"}, "ATRIUM_HTTP_ADDR", `must be host:port or :port, got "8080"`},

		{"proxies", map[string]string{"ATRIUM_HTTP_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"}, "", ""},
		{"proxies bad CIDR", map[string]string{"ATRIUM_HTTP_TRUSTED_PROXIES": "10.0.0.0/8,lb.internal"},
			"ATRIUM_HTTP_TRUSTED_PROXIES", `"lb.internal" is not a CIDR`},
		{"proxies address without mask", map[string]string{"ATRIUM_HTTP_TRUSTED_PROXIES": "10.0.0.1"},
			"ATRIUM_HTTP_TRUSTED_PROXIES", `"10.0.0.1" is not a CIDR`},

		{"body limit minimum", map[string]string{"ATRIUM_HTTP_BODY_LIMIT": "1024"}, "", ""},
		{"body limit too small", map[string]string{"ATRIUM_HTTP_BODY_LIMIT": "1023"}, "ATRIUM_HTTP_BODY_LIMIT", "at least 1024"},

		{"request timeout zero", map[string]string{"ATRIUM_HTTP_REQUEST_TIMEOUT": "0s"}, "ATRIUM_HTTP_REQUEST_TIMEOUT", "positive duration"},
		{"request timeout negative", map[string]string{"ATRIUM_HTTP_REQUEST_TIMEOUT": "-1s"}, "ATRIUM_HTTP_REQUEST_TIMEOUT", "positive duration"},

		{"shutdown grace zero", map[string]string{"ATRIUM_HTTP_SHUTDOWN_GRACE": "0s"}, "", ""},
		{"shutdown grace negative", map[string]string{"ATRIUM_HTTP_SHUTDOWN_GRACE": "-1s"}, "ATRIUM_HTTP_SHUTDOWN_GRACE", "must not be negative"},

		{"database postgresql scheme", map[string]string{"ATRIUM_DATABASE_URL": "postgresql://u@h/db"}, "", ""},
		{"database other scheme", map[string]string{"ATRIUM_DATABASE_URL": "mysql://u:p@h/db"}, "ATRIUM_DATABASE_URL", "must be a postgres:// URL"},
		{"database key=value string", map[string]string{"ATRIUM_DATABASE_URL": "host=h dbname=db"}, "ATRIUM_DATABASE_URL", "must be a postgres:// URL"},

		{"max conns minimum", map[string]string{"ATRIUM_DATABASE_MAX_CONNS": "2"}, "", ""},
		{"max conns too few", map[string]string{"ATRIUM_DATABASE_MAX_CONNS": "1"}, "ATRIUM_DATABASE_MAX_CONNS", "at least 2"},

		{"redis TLS", map[string]string{"ATRIUM_REDIS_URL": "rediss://:p@h:6380/0"}, "", ""},
		{"redis other scheme", map[string]string{"ATRIUM_REDIS_URL": "http://h:6379"}, "ATRIUM_REDIS_URL", "must be a redis:// or rediss:// URL"},
		{"redis host only", map[string]string{"ATRIUM_REDIS_URL": "h:6379"}, "ATRIUM_REDIS_URL", "must be a redis:// or rediss:// URL"},

		{"prefix", map[string]string{"ATRIUM_REDIS_PREFIX": "atrium-staging_2"}, "", ""},
		{"prefix with colon", map[string]string{"ATRIUM_REDIS_PREFIX": "atrium:eu"}, "ATRIUM_REDIS_PREFIX", "without spaces, ':' or '*'"},
		{"prefix with space", map[string]string{"ATRIUM_REDIS_PREFIX": "atrium eu"}, "ATRIUM_REDIS_PREFIX", "without spaces"},
		{"prefix with star", map[string]string{"ATRIUM_REDIS_PREFIX": "atrium*"}, "ATRIUM_REDIS_PREFIX", "'*'"},
		{"prefix empty", map[string]string{"ATRIUM_REDIS_PREFIX": ""}, "ATRIUM_REDIS_PREFIX", "non-empty"},

		{"redis timeout zero", map[string]string{"ATRIUM_REDIS_TIMEOUT": "0s"}, "ATRIUM_REDIS_TIMEOUT", "positive duration"},

		{"master key with id", map[string]string{"ATRIUM_MASTER_KEY": "k1:" + testMasterKey}, "", ""},
		{"master key rotated", map[string]string{"ATRIUM_MASTER_KEY": "k2:" + otherMasterKey + ", k1:" + testMasterKey}, "", ""},
		{"master key with trailing newline", map[string]string{"ATRIUM_MASTER_KEY": testMasterKey + "\n"}, "", ""},
		{"master key not base64", map[string]string{"ATRIUM_MASTER_KEY": "s3cret-not-base64!"}, "ATRIUM_MASTER_KEY", "not base64"},
		{"master key URL-safe base64", map[string]string{"ATRIUM_MASTER_KEY": "s3cret_KEY-" + otherMasterKey[11:]}, "ATRIUM_MASTER_KEY", "not base64"},
		{"master key too short", map[string]string{"ATRIUM_MASTER_KEY": shortMasterKey}, "ATRIUM_MASTER_KEY", "16 bytes, want 32"},
		{"master key too long", map[string]string{"ATRIUM_MASTER_KEY": strings.Repeat("s3cretKEY", 7) + "A"}, "ATRIUM_MASTER_KEY", "48 bytes, want 32"},
		{"master key old entry too short", map[string]string{"ATRIUM_MASTER_KEY": "k2:" + testMasterKey + ",k1:" + shortMasterKey},
			"ATRIUM_MASTER_KEY", `key "k1": 16 bytes, want 32`},
		{"master key empty id", map[string]string{"ATRIUM_MASTER_KEY": ":" + testMasterKey}, "ATRIUM_MASTER_KEY", "must be a word"},
		{"master key id with $", map[string]string{"ATRIUM_MASTER_KEY": "k$1:" + testMasterKey}, "ATRIUM_MASTER_KEY", "must be a word"},
		{"master key id twice", map[string]string{"ATRIUM_MASTER_KEY": "k1:" + testMasterKey + ",k1:" + otherMasterKey}, "ATRIUM_MASTER_KEY", "listed twice"},

		{"issuer URL", map[string]string{"ATRIUM_AUTH_ISSUER": "https://atrium.example.com"}, "", ""},
		{"issuer empty", map[string]string{"ATRIUM_AUTH_ISSUER": ""}, "ATRIUM_AUTH_ISSUER", "must not be empty"},
		{"audience empty", map[string]string{"ATRIUM_AUTH_AUDIENCE": ""}, "ATRIUM_AUTH_AUDIENCE", "must not be empty"},

		{"access TTL minimum", map[string]string{"ATRIUM_AUTH_ACCESS_TTL": "1m"}, "", ""},
		{"access TTL maximum", map[string]string{"ATRIUM_AUTH_ACCESS_TTL": "1h"}, "", ""},
		{"access TTL too short", map[string]string{"ATRIUM_AUTH_ACCESS_TTL": "59s"}, "ATRIUM_AUTH_ACCESS_TTL", "between 1m and 1h"},
		{"access TTL zero", map[string]string{"ATRIUM_AUTH_ACCESS_TTL": "0s"}, "ATRIUM_AUTH_ACCESS_TTL", "between 1m and 1h"},
		{"access TTL too long", map[string]string{"ATRIUM_AUTH_ACCESS_TTL": "61m"}, "ATRIUM_AUTH_ACCESS_TTL", "between 1m and 1h"},

		{"session idle minimum", map[string]string{"ATRIUM_AUTH_SESSION_IDLE": "1m"}, "", ""},
		{"session idle equal to max", map[string]string{"ATRIUM_AUTH_SESSION_IDLE": "2h", "ATRIUM_AUTH_SESSION_MAX": "2h"}, "", ""},
		{"session idle too short", map[string]string{"ATRIUM_AUTH_SESSION_IDLE": "59s"}, "ATRIUM_AUTH_SESSION_IDLE", "at least 1m"},
		{"session idle negative", map[string]string{"ATRIUM_AUTH_SESSION_IDLE": "-30m"}, "ATRIUM_AUTH_SESSION_IDLE", "at least 1m"},
		{"session idle above max", map[string]string{"ATRIUM_AUTH_SESSION_IDLE": "13h"}, "ATRIUM_AUTH_SESSION_IDLE", "not above ATRIUM_AUTH_SESSION_MAX"},
		{"session max below idle", map[string]string{"ATRIUM_AUTH_SESSION_MAX": "10m"}, "ATRIUM_AUTH_SESSION_IDLE", "not above ATRIUM_AUTH_SESSION_MAX"},

		{"key rotation minimum", map[string]string{"ATRIUM_AUTH_KEY_ROTATION": "1h"}, "", ""},
		{"key rotation too short", map[string]string{"ATRIUM_AUTH_KEY_ROTATION": "59m"}, "ATRIUM_AUTH_KEY_ROTATION", "at least 1h"},
		{"key rotation zero", map[string]string{"ATRIUM_AUTH_KEY_ROTATION": "0s"}, "ATRIUM_AUTH_KEY_ROTATION", "at least 1h"},

		{"usage intervals minimum", map[string]string{"ATRIUM_USAGE_PUSH_INTERVAL": "100ms", "ATRIUM_USAGE_FLUSH_INTERVAL": "1s"}, "", ""},
		{"usage intervals maximum", map[string]string{"ATRIUM_USAGE_PUSH_INTERVAL": "10s", "ATRIUM_USAGE_FLUSH_INTERVAL": "1h"}, "", ""},
		{"usage push too often", map[string]string{"ATRIUM_USAGE_PUSH_INTERVAL": "99ms"}, "ATRIUM_USAGE_PUSH_INTERVAL", "between 100ms and 10s"},
		{"usage push too rare", map[string]string{"ATRIUM_USAGE_PUSH_INTERVAL": "11s"}, "ATRIUM_USAGE_PUSH_INTERVAL", "between 100ms and 10s"},
		{"usage flush zero", map[string]string{"ATRIUM_USAGE_FLUSH_INTERVAL": "0s"}, "ATRIUM_USAGE_FLUSH_INTERVAL", "between 1s and 1h"},
		{"usage flush too rare", map[string]string{"ATRIUM_USAGE_FLUSH_INTERVAL": "2h"}, "ATRIUM_USAGE_FLUSH_INTERVAL", "between 1s and 1h"},

		{"log level debug", map[string]string{"ATRIUM_LOG_LEVEL": "debug"}, "", ""},
		{"log level unknown", map[string]string{"ATRIUM_LOG_LEVEL": "verbose"}, "ATRIUM_LOG_LEVEL", `must be debug, info, warn or error, got "verbose"`},
		{"log level upper case", map[string]string{"ATRIUM_LOG_LEVEL": "INFO"}, "ATRIUM_LOG_LEVEL", "must be debug, info, warn or error"},

		{"log format console", map[string]string{"ATRIUM_LOG_FORMAT": "console"}, "", ""},
		{"log format unknown", map[string]string{"ATRIUM_LOG_FORMAT": "xml"}, "ATRIUM_LOG_FORMAT", `must be auto, json or console, got "xml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.env)
			if tc.wantVar == "" {
				if err != nil {
					t.Fatalf("Load: %v, want a valid configuration", err)
				}
				return
			}
			wantError(t, err, tc.wantVar, tc.problem)
			if v := tc.env["ATRIUM_MASTER_KEY"]; v != "" && strings.Contains(err.Error(), strings.TrimSpace(v)) {
				t.Errorf("the error prints the master key: %v", err)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the error prints (part of) a secret: %v", err)
			}
		})
	}
}

// TestMasterKeyErrorsHideTheKey checks that no error about a bad master key
// prints the key or any of its entries: only the key's id and what is wrong.
func TestMasterKeyErrorsHideTheKey(t *testing.T) {
	for _, bad := range []string{
		"s3cret-not-base64!",
		shortMasterKey,
		"k2:" + otherMasterKey + ",k1:" + shortMasterKey,
		"k2:" + shortMasterKey + ",k1:" + otherMasterKey,
		"k2:s3cret!,k1:" + testMasterKey,
		otherMasterKey + "," + otherMasterKey,
		otherMasterKey[:20],
	} {
		t.Run(bad, func(t *testing.T) {
			_, err := load(t, map[string]string{"ATRIUM_MASTER_KEY": bad})
			wantError(t, err, "ATRIUM_MASTER_KEY", "")
			msg := err.Error()
			for _, entry := range strings.Split(bad, ",") {
				_, b64, found := strings.Cut(entry, ":")
				if !found {
					b64 = entry
				}
				if strings.Contains(msg, b64) {
					t.Errorf("the error prints the key %q: %s", b64, msg)
				}
			}
			if strings.Contains(msg, "s3cret") {
				t.Errorf("the error prints part of the key: %s", msg)
			}
		})
	}
}

// writeFile writes content to a new file in a temporary directory and
// returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSecretFiles(t *testing.T) {
	const fileURL = "postgres://atrium:s3cret@db.internal:5432/atrium?sslmode=verify-full"

	t.Run("read with trailing newline trimmed", func(t *testing.T) {
		for _, content := range []string{fileURL, fileURL + "\n", fileURL + "\r\n"} {
			c, err := load(t, map[string]string{"ATRIUM_DATABASE_URL": unset, "ATRIUM_DATABASE_URL_FILE": writeFile(t, content)})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if c.Database.URL != fileURL {
				t.Errorf("file %q: Database.URL = %q, want %q", content, c.Database.URL, fileURL)
			}
		}
	})

	t.Run("both secrets from files", func(t *testing.T) {
		c, err := load(t, map[string]string{
			"ATRIUM_DATABASE_URL": unset, "ATRIUM_DATABASE_URL_FILE": writeFile(t, fileURL+"\n"),
			"ATRIUM_REDIS_URL": unset, "ATRIUM_REDIS_URL_FILE": writeFile(t, "rediss://:s3cret@cache:6380/1\n"),
		})
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if c.Database.URL != fileURL || c.Redis.URL != "rediss://:s3cret@cache:6380/1" {
			t.Errorf("Database.URL = %q, Redis.URL = %q", c.Database.URL, c.Redis.URL)
		}
	})

	t.Run("secret stays out of the environment and Load repeats", func(t *testing.T) {
		setEnv(t, map[string]string{"ATRIUM_DATABASE_URL": unset, "ATRIUM_DATABASE_URL_FILE": writeFile(t, fileURL)})
		for i := range 2 {
			c, err := config.Load()
			if err != nil {
				t.Fatalf("Load #%d: %v", i+1, err)
			}
			if c.Database.URL != fileURL {
				t.Errorf("Load #%d: Database.URL = %q, want %q", i+1, c.Database.URL, fileURL)
			}
			if v, ok := os.LookupEnv("ATRIUM_DATABASE_URL"); ok {
				t.Errorf("after Load #%d the secret is in the process environment (child processes inherit it): %q", i+1, v)
			}
		}
	})

	t.Run("unreadable file", func(t *testing.T) {
		for _, path := range []string{filepath.Join(t.TempDir(), "missing"), t.TempDir()} {
			_, err := load(t, map[string]string{"ATRIUM_DATABASE_URL": unset, "ATRIUM_DATABASE_URL_FILE": path})
			wantError(t, err, "ATRIUM_DATABASE_URL_FILE", "cannot read file")
		}
	})

	t.Run("error after an earlier file was read", func(t *testing.T) {
		_, err := load(t, map[string]string{
			"ATRIUM_DATABASE_URL": unset, "ATRIUM_DATABASE_URL_FILE": writeFile(t, fileURL),
			"ATRIUM_REDIS_URL": unset, "ATRIUM_REDIS_URL_FILE": filepath.Join(t.TempDir(), "missing"),
		})
		wantError(t, err, "ATRIUM_REDIS_URL_FILE", "cannot read file")
		if _, ok := os.LookupEnv("ATRIUM_DATABASE_URL"); ok {
			t.Error("a failed Load left ATRIUM_DATABASE_URL, read from its file, in the environment")
		}
	})

	t.Run("variable and file both set", func(t *testing.T) {
		for _, direct := range []string{testDatabaseURL, ""} {
			_, err := load(t, map[string]string{"ATRIUM_DATABASE_URL": direct, "ATRIUM_DATABASE_URL_FILE": writeFile(t, fileURL)})
			wantError(t, err, "ATRIUM_DATABASE_URL_FILE", "set together with ATRIUM_DATABASE_URL")
			if v := os.Getenv("ATRIUM_DATABASE_URL"); v != direct {
				t.Errorf("ATRIUM_DATABASE_URL changed to %q, want %q", v, direct)
			}
		}
	})

	t.Run("master key from a file", func(t *testing.T) {
		for _, content := range []string{otherMasterKey, otherMasterKey + "\n", "k2:" + otherMasterKey + ",k1:" + testMasterKey + "\n"} {
			setEnv(t, map[string]string{"ATRIUM_MASTER_KEY": unset, "ATRIUM_MASTER_KEY_FILE": writeFile(t, content)})
			c, err := config.Load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if want := strings.TrimRight(content, "\n"); c.MasterKey != want {
				t.Errorf("file %q: MasterKey = %q, want %q", content, c.MasterKey, want)
			}
			if _, ok := os.LookupEnv("ATRIUM_MASTER_KEY"); ok {
				t.Error("after Load the master key is in the process environment (child processes inherit it)")
			}
		}
	})

	t.Run("master key file with a bad key", func(t *testing.T) {
		_, err := load(t, map[string]string{"ATRIUM_MASTER_KEY": unset, "ATRIUM_MASTER_KEY_FILE": writeFile(t, shortMasterKey+"\n")})
		wantError(t, err, "ATRIUM_MASTER_KEY", "16 bytes, want 32")
		if strings.Contains(err.Error(), shortMasterKey) {
			t.Errorf("the error prints the key: %v", err)
		}
	})

	t.Run("master key and its file both set", func(t *testing.T) {
		_, err := load(t, map[string]string{"ATRIUM_MASTER_KEY": testMasterKey, "ATRIUM_MASTER_KEY_FILE": writeFile(t, otherMasterKey)})
		wantError(t, err, "ATRIUM_MASTER_KEY_FILE", "set together with ATRIUM_MASTER_KEY")
	})

	t.Run("only secrets come from files", func(t *testing.T) {
		c, err := load(t, map[string]string{"ATRIUM_LOG_LEVEL_FILE": writeFile(t, "debug")})
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if c.Log.Level != "info" {
			t.Errorf("Log.Level = %q: ATRIUM_LOG_LEVEL_FILE was read, but only secret variables have a _FILE form", c.Log.Level)
		}
	})
}

func TestShouldMigrateOnStart(t *testing.T) {
	for _, tc := range []struct {
		env, migrate string
		want         bool
	}{
		{"development", unset, true},
		{"production", unset, false},
		{"development", "false", false},
		{"production", "true", true},
		{"production", "1", true},
		{"development", "0", false},
	} {
		t.Run(tc.env+"/"+strings.ReplaceAll(tc.migrate, unset, "unset"), func(t *testing.T) {
			c, err := load(t, map[string]string{"ATRIUM_ENV": tc.env, "ATRIUM_MIGRATE_ON_START": tc.migrate})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := c.ShouldMigrateOnStart(); got != tc.want {
				t.Errorf("ShouldMigrateOnStart() = %v, want %v", got, tc.want)
			}
		})
	}
}

// dump returns Dump's output as a map from variable to printed value, and
// fails t if a variable is missing or printed twice.
func dump(t *testing.T, c config.Config) (map[string]string, string) {
	t.Helper()
	var b strings.Builder
	if err := config.Dump(c, &b); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), " ")
		if _, dup := got[key]; dup {
			t.Errorf("Dump prints %s twice", key)
		}
		got[key] = strings.TrimSpace(val)
	}
	vars, err := config.Vars(&c)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if _, ok := got[v.Key]; !ok {
			t.Errorf("Dump does not print %s", v.Key)
		}
	}
	return got, b.String()
}

func TestDump(t *testing.T) {
	c, err := load(t, map[string]string{
		"ATRIUM_DATABASE_URL":         "postgres://u:s3cret@h/db",
		"ATRIUM_REDIS_URL":            "redis://:s3cret@h:6379/0",
		"ATRIUM_HTTP_TRUSTED_PROXIES": "10.0.0.0/8,192.168.0.0/16",
		"ATRIUM_MASTER_KEY":           "k2:" + otherMasterKey + ",k1:" + testMasterKey,
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got, out := dump(t, c)
	if strings.Contains(out, "s3cret") {
		t.Errorf("Dump prints a password:\n%s", out)
	}
	if strings.Contains(out, testMasterKey) || strings.Contains(out, otherMasterKey) {
		t.Errorf("Dump prints the master key:\n%s", out)
	}
	for key, want := range map[string]string{
		"ATRIUM_DATABASE_URL":         "postgres://u:xxx@h/db",
		"ATRIUM_REDIS_URL":            "redis://:xxx@h:6379/0",
		"ATRIUM_INSTANCE_ID":          "(unset)",
		"ATRIUM_MIGRATE_ON_START":     "(unset)",
		"ATRIUM_HTTP_TRUSTED_PROXIES": "10.0.0.0/8 192.168.0.0/16",
		"ATRIUM_HTTP_ADDR":            ":8080",
		"ATRIUM_HTTP_REQUEST_TIMEOUT": "30s",
		"ATRIUM_ENV":                  "production",
		"ATRIUM_MASTER_KEY":           "***",
		"ATRIUM_AUTH_ISSUER":          "atrium",
		"ATRIUM_AUTH_ACCESS_TTL":      "10m0s",
		"ATRIUM_AUTH_KEY_ROTATION":    "720h0m0s",
	} {
		if got[key] != want {
			t.Errorf("Dump prints %s as %q, want %q", key, got[key], want)
		}
	}
}

func TestDumpRedactsSecrets(t *testing.T) {
	for _, tc := range []struct {
		name, dbURL, want string
	}{
		{"password in user info", "postgres://u:s3cret@h:5432/db", "postgres://u:xxx@h:5432/db"},
		{"password in query", "postgres://u@h/db?sslmode=disable&password=s3cret", "postgres://u@h/db"},
		{"no password", "postgres://u@h/db", "postgres://u@h/db"},
		{"key=value string", "host=h user=u password=s3cret", "***"},
		{"unset", "", "(unset)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Config{Database: config.Database{URL: tc.dbURL}}
			got, out := dump(t, c)
			if strings.Contains(out, "s3cret") {
				t.Errorf("Dump prints a password:\n%s", out)
			}
			if got["ATRIUM_DATABASE_URL"] != tc.want {
				t.Errorf("Dump prints ATRIUM_DATABASE_URL as %q, want %q", got["ATRIUM_DATABASE_URL"], tc.want)
			}
		})
	}
}

// TestDumpRedactsMasterKey checks that the master key, which is not a URL,
// is printed as *** whatever its form.
func TestDumpRedactsMasterKey(t *testing.T) {
	for _, tc := range []struct {
		name, key, want string
	}{
		{"bare key", otherMasterKey, "***"},
		{"one entry with id", "k1:" + otherMasterKey, "***"},
		{"rotated keyring", "k2:" + otherMasterKey + ",k1:" + testMasterKey, "***"},
		{"unset", "", "(unset)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Config{MasterKey: tc.key}
			got, out := dump(t, c)
			if strings.Contains(out, "s3cret") || (tc.key != "" && strings.Contains(out, testMasterKey)) {
				t.Errorf("Dump prints the master key:\n%s", out)
			}
			if got["ATRIUM_MASTER_KEY"] != tc.want {
				t.Errorf("Dump prints ATRIUM_MASTER_KEY as %q, want %q", got["ATRIUM_MASTER_KEY"], tc.want)
			}
		})
	}
}

func TestDumpOptBool(t *testing.T) {
	c, err := load(t, map[string]string{"ATRIUM_MIGRATE_ON_START": "false"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, _ := dump(t, c); got["ATRIUM_MIGRATE_ON_START"] != "false" {
		t.Errorf("Dump prints an explicit false as %q, want \"false\"", got["ATRIUM_MIGRATE_ON_START"])
	}
}

// TestVarsKeysAreRead checks that each key Vars lists is the one Load reads:
// setting it changes the loaded configuration.
func TestVarsKeysAreRead(t *testing.T) {
	samples := map[string]string{
		"ATRIUM_ENV":                      "development",
		"ATRIUM_INSTANCE_ID":              "api-1",
		"ATRIUM_MIGRATE_ON_START":         "true",
		"ATRIUM_HTTP_ADDR":                "127.0.0.1:9090",
		"ATRIUM_HTTP_TRUSTED_PROXIES":     "10.0.0.0/8",
		"ATRIUM_HTTP_BODY_LIMIT":          "2048",
		"ATRIUM_HTTP_REQUEST_TIMEOUT":     "5s",
		"ATRIUM_HTTP_SHUTDOWN_GRACE":      "10s",
		"ATRIUM_DATABASE_URL":             "postgres://other@h/db",
		"ATRIUM_DATABASE_MAX_CONNS":       "4",
		"ATRIUM_DATABASE_CONNECT_TIMEOUT": "5s",
		"ATRIUM_REDIS_URL":                "redis://other:6379/1",
		"ATRIUM_REDIS_PREFIX":             "other",
		"ATRIUM_REDIS_TIMEOUT":            "1s",
		"ATRIUM_LOG_LEVEL":                "debug",
		"ATRIUM_LOG_FORMAT":               "json",
		"ATRIUM_MASTER_KEY":               "k2:" + otherMasterKey + ",k1:" + testMasterKey,
		// Durations as time.Duration prints them, so that Vars reports the sample.
		"ATRIUM_AUTH_ISSUER":          "https://atrium.example.com",
		"ATRIUM_AUTH_AUDIENCE":        "other-api",
		"ATRIUM_AUTH_ACCESS_TTL":      "15m0s",
		"ATRIUM_AUTH_SESSION_IDLE":    "45m0s",
		"ATRIUM_AUTH_SESSION_MAX":     "24h0m0s",
		"ATRIUM_AUTH_KEY_ROTATION":    "168h0m0s",
		"ATRIUM_USAGE_PUSH_INTERVAL":  "500ms",
		"ATRIUM_USAGE_FLUSH_INTERVAL": "30s",

		"ATRIUM_PAYMENTS_CHANNELS":          "simbank=http://127.0.0.1:8090",
		"ATRIUM_PAYMENTS_TEST_CHANNELS":     "simbank-test=http://127.0.0.1:8090",
		"ATRIUM_PAYMENTS_CARD_KEYS":         "c1:" + otherMasterKey,
		"ATRIUM_PAYMENTS_IDEMPOTENCY_TTL":   "48h0m0s",
		"ATRIUM_PAYMENTS_TIMEOUT_FLOOR":     "100ms",
		"ATRIUM_PAYMENTS_TIMEOUT_CEILING":   "10s",
		"ATRIUM_PAYMENTS_MAX_CONCURRENT":    "128",
		"ATRIUM_PAYMENTS_CALL_TIMEOUT":      "30s",
		"ATRIUM_PAYMENTS_RECOVER_AFTER":     "2m0s",
		"ATRIUM_PAYMENTS_RECOVERY_INTERVAL": "1s",

		"ATRIUM_GPU_BACKEND":           "mock",
		"ATRIUM_GPU_NODE":              "gpu-host-1",
		"ATRIUM_GPU_POLICY":            "binpack",
		"ATRIUM_GPU_REFRESH_INTERVAL":  "1s",
		"ATRIUM_GPU_NODE_TTL":          "30s",
		"ATRIUM_GPU_SCHEDULE_INTERVAL": "2s",
		"ATRIUM_GPU_LEASE_TTL":         "10s",
		"ATRIUM_GPU_METER_INTERVAL":    "1m0s",
		"ATRIUM_GPU_ADVERTISE_HOST":    "10.0.0.7",
		"ATRIUM_GPU_REPLICA_GRACE":     "30s",
		"ATRIUM_GPU_LB_STRATEGY":       "round_robin",
		"ATRIUM_GPU_INFERENCE_TIMEOUT": "5m0s",
		"ATRIUM_GPU_HOLD_TIMEOUT":      "30s",
		"ATRIUM_GPU_COMMANDS":          "/opt/models/serve",
	}
	base, err := load(t, nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	vars, err := config.Vars(&base)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, v := range vars {
		keys[v.Key] = true
		t.Run(v.Key, func(t *testing.T) {
			sample, ok := samples[v.Key]
			if !ok {
				t.Fatalf("no sample value for %s: add one to this test", v.Key)
			}
			c, err := load(t, map[string]string{v.Key: sample})
			if err != nil {
				t.Fatalf("Load with %s=%s: %v", v.Key, sample, err)
			}
			if reflect.DeepEqual(c, base) {
				t.Errorf("setting %s=%s changed nothing: Load does not read that key", v.Key, sample)
			}
			after, err := config.Vars(&c)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range after {
				if a.Key == v.Key && strings.Trim(a.Value, "[]") != sample {
					t.Errorf("Vars reports %s = %q, want %q", v.Key, a.Value, sample)
				}
			}
		})
	}
	for _, k := range []string{"ATRIUM_HTTP_ADDR", "ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_MAX_CONNS", "ATRIUM_REDIS_URL", "ATRIUM_REDIS_PREFIX", "ATRIUM_LOG_LEVEL", "ATRIUM_MIGRATE_ON_START", "ATRIUM_MASTER_KEY", "ATRIUM_AUTH_ISSUER", "ATRIUM_AUTH_KEY_ROTATION"} {
		if !keys[k] {
			t.Errorf("Vars does not list %s", k)
		}
	}
}
