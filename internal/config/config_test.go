package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// mapFlags is a Flags holding the explicitly set flags.
type mapFlags map[string]any

func (m mapFlags) IsSet(name string) bool { _, ok := m[name]; return ok }
func (m mapFlags) String(name string) string {
	s, _ := m[name].(string)
	return s
}
func (m mapFlags) StringSlice(name string) []string {
	s, _ := m[name].([]string)
	return s
}
func (m mapFlags) Int(name string) int {
	i, _ := m[name].(int)
	return i
}
func (m mapFlags) Duration(name string) time.Duration {
	d, _ := m[name].(time.Duration)
	return d
}

// load is Load, Merge and Finish, as `stave serve` runs them.
func load(yamlText string, flags mapFlags) (*Config, error) {
	c, err := Load("stave.yaml", strings.NewReader(yamlText))
	if err != nil {
		return nil, err
	}
	if err := c.Merge(flags); err != nil {
		return nil, err
	}
	return c, c.Finish()
}

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		check    func(t *testing.T, c *Config)
	}{
		{"empty file gives the defaults", "", func(t *testing.T, c *Config) {
			want := Default()
			want.API = "unix:./stave-data/stave.sock"
			want.src = c.src
			if !reflect.DeepEqual(c, want) {
				t.Errorf("got %+v, want %+v", c, want)
			}
		}},
		{"comments only", "# nothing\n", func(t *testing.T, c *Config) {
			if c.DataDir != DefaultDataDir || len(c.Portals) != 1 {
				t.Errorf("got %+v", c)
			}
		}},
		{"full file", `
data_dir: /var/lib/stave
portals:
  - listen: 10.0.0.5:3260
    advertise: 192.0.2.5:3260
  - listen: "[fe80::1%eth0]:3260"
  - listen: storage.example.com:3261
api: unix:/run/stave/stave.sock
discovery_chap: {user: disc, secret: 0123456789ab}
log: {level: debug, format: json}
iscsi: {nop_interval: 5s, queue_depth: 64}
http: {listen: "127.0.0.1:9443", token_file: /etc/stave/token}
pool: {scrub_rate: 50MiB, gc_interval: 1m}
`, func(t *testing.T, c *Config) {
			want := &Config{
				DataDir: "/var/lib/stave",
				Portals: []Portal{{"10.0.0.5:3260", "192.0.2.5:3260"}, {Listen: "[fe80::1%eth0]:3260"}, {Listen: "storage.example.com:3261"}},
				API:     "unix:/run/stave/stave.sock", DiscoveryCHAP: &CHAP{"disc", "0123456789ab"},
				Log:         Log{"debug", "json"},
				ISCSI:       ISCSI{NOPInterval: 5 * time.Second, NOPTimeout: 5 * time.Second, QueueDepth: 64},
				HTTP:        HTTP{Listen: "127.0.0.1:9443", TokenFile: "/etc/stave/token"},
				Pool:        Pool{ScrubRate: 50 << 20, GCInterval: time.Minute},
				Replication: Replication{LeaseTTL: DefaultLeaseTTL, ReplaceAfter: DefaultReplaceAfter},
				src:         c.src,
			}
			if !reflect.DeepEqual(c, want) {
				t.Errorf("got  %+v\nwant %+v", c, want)
			}
			if c.SocketPath() != "/run/stave/stave.sock" {
				t.Errorf("SocketPath %q", c.SocketPath())
			}
		}},
		{"api derives from data_dir", "data_dir: /srv/stave/\n", func(t *testing.T, c *Config) {
			if c.API != "unix:/srv/stave/stave.sock" {
				t.Errorf("api %q", c.API)
			}
		}},
		{"portals replace the default", "portals: [{listen: '0.0.0.0:3260'}]\n", func(t *testing.T, c *Config) {
			if len(c.Portals) != 1 || c.Portals[0].Listen != "0.0.0.0:3260" {
				t.Errorf("portals %+v", c.Portals)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(tc.in, nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestErrors checks that each bad input fails with ErrInvalid and
// messages that name the place and say what to do.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		flags    mapFlags
		want     []string // substrings of the error, in any order
	}{
		{"unknown key", "data_dir: x\nportls: []\n", nil,
			[]string{`stave.yaml:2: unknown key "portls": valid keys here are data_dir, portals, api`}},
		{"unknown nested key", "log:\n  levl: debug\n", nil,
			[]string{`stave.yaml:2: unknown key "levl" in log: valid keys here are level, format`}},
		{"unknown portal key", "portals:\n  - listen: ':3260'\n    adverise: x\n", nil,
			[]string{`stave.yaml:3: unknown key "adverise"`, "valid keys here are listen, advertise"}},
		{"wrong type", "iscsi:\n  queue_depth: many\n", nil,
			[]string{`stave.yaml:2: iscsi.queue_depth: "many" is a string: want an integer`}},
		{"duration without unit", "iscsi:\n  nop_interval: 10\n", nil,
			[]string{`stave.yaml:2: iscsi.nop_interval: "10" is an integer: want a duration such as 10s`}},
		{"bad size", "pool:\n  scrub_rate: fast\n", nil, []string{`stave.yaml:2: pool.scrub_rate: size "fast": use a whole number`}},
		{"duplicate key", "data_dir: a\ndata_dir: b\n", nil, []string{`stave.yaml:2:`, `"data_dir" already defined at line 1`}},
		{"two documents", "data_dir: a\n---\ndata_dir: b\n", nil, []string{"stave.yaml:2: a second YAML document"}},
		{"not a mapping", "- a\n- b\n", nil, []string{"stave.yaml:1: expected a mapping of options (key: value), got a list"}},
		{"syntax", "log: {level: info\n", nil, []string{"stave.yaml:"}},
		{"portal without port", "portals:\n  - listen: 10.0.0.1\n", nil,
			[]string{`stave.yaml:2: portals[0].listen: "10.0.0.1" has no port: use HOST:PORT`}},
		{"port out of range", "portals:\n  - listen: 10.0.0.1:70000\n", nil,
			[]string{`portals[0].listen: port "70000" of "10.0.0.1:70000" is out of range: use 0 to 65535`}},
		{"bad host", "portals:\n  - listen: 'no_such host:3260'\n", nil,
			[]string{`host "no_such host" of "no_such host:3260" is neither an IP address nor a host name`}},
		{"duplicate portal", "portals:\n  - listen: '[::]:3260'\n  - listen: 10.0.0.1:3260\n  - listen: '[0::0]:3260'\n", nil,
			[]string{`stave.yaml:4: portals[2].listen: "[0::0]:3260" duplicates portals[0]: give each address once`}},
		{"wildcard advertise", "portals:\n  - listen: ':3260'\n    advertise: '0.0.0.0:3260'\n", nil,
			[]string{`stave.yaml:3: portals[0].advertise: "0.0.0.0:3260" is a wildcard address`}},
		{"advertise port 0", "portals:\n  - listen: ':3260'\n    advertise: '10.0.0.1:0'\n", nil,
			[]string{`use 1 to 65535`}},
		{"advertise without host", "portals:\n  - listen: ':3260'\n    advertise: ':3260'\n", nil,
			[]string{`portals[0].advertise: ":3260" has no host`}},
		{"no portals", "portals: []\n", nil, []string{`portals: none: give at least one`}},
		{"api not unix", "api: /run/stave.sock\n", nil, []string{`stave.yaml:1: api: "/run/stave.sock": use unix:PATH`}},
		{"api too long", "api: unix:/" + strings.Repeat("a", 120) + "\n", nil, []string{"socket path is 121 bytes"}},
		{"CHAP secret short", "discovery_chap: {user: u, secret: short}\n", nil,
			[]string{`stave.yaml:1: discovery_chap.secret: is 5 characters: use 12 to 255`}},
		{"CHAP secret long", "discovery_chap: {user: u, secret: " + strings.Repeat("s", 256) + "}\n", nil,
			[]string{`discovery_chap.secret: is 256 characters`}},
		{"CHAP no user", "discovery_chap:\n  secret: 0123456789abc\n", nil, []string{`discovery_chap.user: is empty`}},
		{"log level", "log:\n  level: verbose\n", nil, []string{`stave.yaml:2: log.level: "verbose": use debug, info, warn or error`}},
		{"log format", "log:\n  format: xml\n", nil, []string{`log.format: "xml": use text or json`}},
		{"negative nop", "iscsi: {nop_interval: -1s}\n", nil, []string{"iscsi.nop_interval: -1s is negative"}},
		{"tiny nop", "iscsi: {nop_interval: 1ms}\n", nil, []string{"iscsi.nop_interval: 1ms is under 1s"}},
		{"timeout without interval", "iscsi: {nop_timeout: 5s}\n", nil, []string{"iscsi.nop_timeout: is set but nop_interval is 0"}},
		{"queue depth", "iscsi: {queue_depth: 0}\n", nil, []string{"iscsi.queue_depth: 0: use 1 to 4096"}},
		{"http without token", "http: {listen: ':9443'}\n", nil, []string{"http.token_file: is empty while http.listen is set"}},
		{"http token without listen", "http: {token_file: /t}\n", nil, []string{"http.token_file: is set but http.listen is empty"}},
		{"http cert without key", "http: {listen: ':1', token_file: /t, tls_cert: /c}\n", nil, []string{"http.tls_cert: and http.tls_key go together"}},
		{"http client CA without TLS", "http: {listen: ':1', client_ca: /ca}\n", nil, []string{"http.client_ca: needs TLS"}},
		{"gc interval", "pool: {gc_interval: 0s}\n", nil, []string{"pool.gc_interval: 0s: use a positive duration"}},
		{"several problems at once", "log: {level: x, format: y}\niscsi: {queue_depth: -1}\n", nil,
			[]string{"log.level", "log.format", "iscsi.queue_depth"}},
		{"flag value named by its flag", "log: {level: info}\n", mapFlags{"log-level": "loud"},
			[]string{`--log-level: log.level: "loud"`}},
		{"flag portal", "", mapFlags{"portal": []string{"1.2.3.4"}}, []string{`--portal: portals[0].listen: "1.2.3.4" has no port`}},
		{"too many advertise", "", mapFlags{"advertise": []string{"1.2.3.4:3260", "1.2.3.5:3260"}},
			[]string{"2 --advertise for 1 portals"}},
		{"bad chap flag", "", mapFlags{"discovery-chap": "nocolon"}, []string{`--discovery-chap:`, "use USER:SECRET"}},
		{"bad scrub flag", "", mapFlags{"scrub-rate": "lots"}, []string{`--scrub-rate: size "lots"`}},
		{"flag data dir empty", "", mapFlags{"data-dir": ""}, []string{"--data-dir: data_dir: is empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(tc.in, tc.flags)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
			if strings.Contains(err.Error(), "0123456789abc") {
				t.Errorf("error shows a CHAP secret: %v", err)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	file := `
data_dir: /var/lib/stave
portals:
  - listen: 10.0.0.5:3260
  - listen: 10.0.1.5:3260
discovery_chap: {user: disc, secret: 0123456789ab}
log: {level: warn, format: json}
iscsi: {nop_interval: 5s, nop_timeout: 7s}
`
	for _, tc := range []struct {
		name  string
		flags mapFlags
		check func(t *testing.T, c *Config)
	}{
		{"no flags keep the file", nil, func(t *testing.T, c *Config) {
			if c.DataDir != "/var/lib/stave" || c.Log.Level != "warn" || len(c.Portals) != 2 || c.DiscoveryCHAP == nil ||
				c.ISCSI.NOPTimeout != 7*time.Second {
				t.Errorf("got %+v", c)
			}
		}},
		{"set flags win", mapFlags{"data-dir": "/srv/s", "log-level": "debug", "nop-timeout": 9 * time.Second, "queue-depth": 16},
			func(t *testing.T, c *Config) {
				if c.DataDir != "/srv/s" || c.API != "unix:/srv/s/stave.sock" || c.Log.Level != "debug" || c.Log.Format != "json" ||
					c.ISCSI.NOPTimeout != 9*time.Second || c.ISCSI.NOPInterval != 5*time.Second || c.ISCSI.QueueDepth != 16 {
					t.Errorf("got %+v", c)
				}
			}},
		{"--portal replaces, --advertise pairs by position", mapFlags{"portal": []string{"[::]:3260", "[::]:3261"}, "advertise": []string{"192.0.2.1:3260"}},
			func(t *testing.T, c *Config) {
				want := []Portal{{"[::]:3260", "192.0.2.1:3260"}, {Listen: "[::]:3261"}}
				if !reflect.DeepEqual(c.Portals, want) {
					t.Errorf("portals %+v, want %+v", c.Portals, want)
				}
			}},
		{"--advertise alone applies to the file's portals", mapFlags{"advertise": []string{"192.0.2.1:3260", "192.0.2.2:3260"}},
			func(t *testing.T, c *Config) {
				if c.Portals[0].Advertise != "192.0.2.1:3260" || c.Portals[1].Advertise != "192.0.2.2:3260" || c.Portals[1].Listen != "10.0.1.5:3260" {
					t.Errorf("portals %+v", c.Portals)
				}
			}},
		{"empty --discovery-chap turns it off", mapFlags{"discovery-chap": ""}, func(t *testing.T, c *Config) {
			if c.DiscoveryCHAP != nil {
				t.Errorf("discovery CHAP %+v", c.DiscoveryCHAP)
			}
		}},
		{"--discovery-chap secret may hold colons", mapFlags{"discovery-chap": "me:a:b:c:d:e:f:g:h"}, func(t *testing.T, c *Config) {
			if *c.DiscoveryCHAP != (CHAP{"me", "a:b:c:d:e:f:g:h"}) {
				t.Errorf("discovery CHAP %+v", c.DiscoveryCHAP)
			}
		}},
		{"pool flags", mapFlags{"scrub-rate": "2G", "gc-interval": 30 * time.Second}, func(t *testing.T, c *Config) {
			if c.Pool.ScrubRate != 2<<30 || c.Pool.GCInterval != 30*time.Second {
				t.Errorf("pool %+v", c.Pool)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(file, tc.flags)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.yaml")
	c, err := LoadFile(missing, true)
	if err != nil || c.DataDir != DefaultDataDir {
		t.Errorf("optional missing file: %v %+v", err, c)
	}
	if _, err := LoadFile(missing, false); err == nil || !strings.Contains(err.Error(), "none.yaml") {
		t.Errorf("required missing file: %v", err)
	}
	p := filepath.Join(dir, "stave.yaml")
	if err := os.WriteFile(p, []byte("log:\n  level: nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = LoadFile(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err == nil || !strings.Contains(err.Error(), p+":2: log.level") {
		t.Errorf("got %v, want the file's path and line", err)
	}
	big := bytes.Repeat([]byte("# x\n"), maxFileSize/4+1)
	if _, err := Load("big", bytes.NewReader(big)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
}

// TestPrintRoundTrip checks that Print's output loads back to the same
// configuration, and that it hides the CHAP secret.
func TestPrintRoundTrip(t *testing.T) {
	c, err := load(`
data_dir: /var/lib/stave
portals: [{listen: "[::]:3260", advertise: "192.0.2.1:3260"}]
discovery_chap: {user: disc, secret: 0123456789ab}
iscsi: {nop_interval: 10s, queue_depth: 32}
pool: {scrub_rate: 1536KiB}
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := c.Print(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "0123456789ab") || !strings.Contains(b.String(), "secret: <redacted>") {
		t.Errorf("secret not redacted:\n%s", b.String())
	}
	if !strings.Contains(b.String(), "scrub_rate: 1536KiB") {
		t.Errorf("size not printed with its unit:\n%s", b.String())
	}
	_, err = load(b.String(), nil)
	if err == nil || !strings.Contains(err.Error(), "discovery_chap.secret") {
		t.Fatalf("a redacted secret (10 characters) must not validate: %v", err)
	}
	d, err := load(strings.Replace(b.String(), "<redacted>", "0123456789ab", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.src, c.src = nil, nil
	if !reflect.DeepEqual(c, d) {
		t.Errorf("round trip:\n got %+v\nwant %+v", d, c)
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		out  string
	}{
		{"0", 0, "0"}, {"4096", 4096, "4KiB"}, {"100", 100, "100"}, {"50MiB", 50 << 20, "50MiB"},
		{"1G", 1 << 30, "1GiB"}, {"3 T", 3 << 40, "3TiB"}, {"2KiB", 2048, "2KiB"}, {"7B", 7, "7"},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want || got.String() != tc.out {
			t.Errorf("ParseSize(%q) = %d (%s), %v; want %d (%s)", tc.in, got, got, err, tc.want, tc.out)
		}
	}
	for _, bad := range []string{"", "-1", "1.5G", "G", "1PiB", "99999999999T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) succeeded", bad)
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	c, err := load("discovery_chap: {user: u, secret: 0123456789ab}\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := c.Clone()
	d.Portals[0].Listen = "x"
	d.DiscoveryCHAP.User = "y"
	if c.Portals[0].Listen == "x" || c.DiscoveryCHAP.User == "y" {
		t.Error("Clone shares portals or CHAP with the original")
	}
}

// FuzzLoad checks that the loader never panics, that whatever it accepts
// and validates prints and loads back the same, and that every error
// wraps ErrInvalid.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"", "data_dir: /x\n", "portals:\n  - listen: ':3260'\n    advertise: 10.0.0.1:3260\n",
		"discovery_chap: {user: u, secret: 0123456789ab}\n", "iscsi: {nop_interval: 5s}\n", "pool: {scrub_rate: 1G}\n",
		"a: &a [*a]\n", "log: !!binary aGVsbG8=\n", "- 1\n", "---\n---\n", "portals: {listen: x}\n",
		"http: {listen: ':1', token_file: t}\n", "data_dir: [1]\n", "? [a]\n: b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := Load("fuzz.yaml", bytes.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if err := c.Merge(mapFlags{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Finish(); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if c.DiscoveryCHAP != nil {
			return // Print redacts the secret: no round trip
		}
		var b bytes.Buffer
		if err := c.Print(&b); err != nil {
			t.Fatal(err)
		}
		d, err := Load("printed", &b)
		if err != nil {
			t.Fatalf("printed config does not load: %v\n%s", err, b.String())
		}
		if err := d.Finish(); err != nil {
			t.Fatalf("printed config does not validate: %v\n%s", err, b.String())
		}
		d.src, c.src = nil, nil
		if !reflect.DeepEqual(c, d) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", d, c)
		}
	})
}
