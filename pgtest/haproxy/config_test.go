package haproxy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	srv := []Server{{Name: "node1", Addr: "127.0.0.1:5432", CheckPort: 8008}, {Name: "node2", Addr: "127.0.0.1:5433", CheckPort: 8009}}
	tests := []struct {
		name string
		cfg  Config
		want []string // lines of haproxy.cfg
	}{
		{"zero is Patroni's documented check", Config{}, []string{
			"maxconn 1000",
			"mode tcp",
			"timeout connect 4000",
			"timeout client 1800000",
			"timeout server 1800000",
			"option httpchk OPTIONS /primary",
			"http-check expect status 200",
			"default-server inter 3000 fall 3 rise 2 on-marked-down shutdown-sessions",
			"server node1 127.0.0.1:5432 check port 8008",
			"server node2 127.0.0.1:5433 check port 8009",
			"bind 127.0.0.1:6000",
		}},
		{"fast", Config{Check: FastCheck}, []string{"default-server inter 1000 fall 2 rise 1 on-marked-down shutdown-sessions"}},
		{"partial check", Config{Check: Check{Inter: 500 * time.Millisecond}}, []string{"default-server inter 500 fall 3 rise 2 on-marked-down shutdown-sessions"}},
		{"settings", Config{CheckRequest: "GET /replica", ConnectTimeout: time.Second, IdleTimeout: time.Hour, MaxConn: 50}, []string{
			"option httpchk GET /replica", "timeout connect 1000", "timeout client 3600000", "timeout server 3600000", "maxconn 50",
		}},
	}
	bin, binErr := binary()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			text := render(cfg, 6000, "/tmp/x/admin.sock", srv)
			lines := map[string]bool{}
			for _, l := range strings.Split(text, "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("haproxy.cfg lacks %q:\n%s", w, text)
				}
			}
			// HAProxy itself accepts it without a warning (a missing or
			// zero timeout, for one, warns).
			if binErr != nil {
				t.Skip(binErr)
			}
			path := filepath.Join(t.TempDir(), "haproxy.cfg")
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput()
			if lo := strings.ToLower(string(out)); err != nil || strings.Contains(lo, "warning") || strings.Contains(lo, "alert") {
				t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, text)
			}
		})
	}
}

func TestConfigInvalid(t *testing.T) {
	good := Server{Name: "a", Addr: "127.0.0.1:5432", CheckPort: 8008}
	tests := []struct {
		name    string
		cfg     Config
		servers []Server
		want    string
	}{
		{"no server", Config{}, nil, "no server"},
		{"bad name", Config{}, []Server{{Name: "a b", Addr: good.Addr, CheckPort: 1}}, `server name "a b"`},
		{"empty name", Config{}, []Server{{Addr: good.Addr, CheckPort: 1}}, `server name ""`},
		{"twice", Config{}, []Server{good, good}, "twice"},
		{"bad addr", Config{}, []Server{{Name: "a", Addr: "127.0.0.1", CheckPort: 1}}, "want host:port"},
		{"bad port", Config{}, []Server{{Name: "a", Addr: "127.0.0.1:0", CheckPort: 1}}, "want host:port"},
		{"no check port", Config{}, []Server{{Name: "a", Addr: good.Addr}}, "check port 0"},
		{"inter below 1ms", Config{Check: Check{Inter: time.Microsecond}}, []Server{good}, "Check.Inter"},
		{"negative fall", Config{Check: Check{Fall: -1}}, []Server{good}, "negative"},
		{"negative idle", Config{IdleTimeout: -time.Second}, []Server{good}, "IdleTimeout"},
		{"request without path", Config{CheckRequest: "OPTIONS"}, []Server{good}, "CheckRequest"},
		{"request with a quote", Config{CheckRequest: `GET /"x`}, []Server{good}, "CheckRequest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults()
			if err == nil {
				err = validateServers(tt.servers)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}
