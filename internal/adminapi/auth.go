package adminapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// ErrAuthConfig marks an unusable authentication setup of the TCP
// listener: no method, a token file others can read, a bad certificate.
var ErrAuthConfig = errors.New("adminapi: TCP listener authentication")

// MinTokenLen is the shortest bearer token accepted, in bytes (128 bits
// of hex).
const MinTokenLen = 32

// Auth checks the callers of a TCP listener of the API. The unix socket
// needs none: its mode (0600) is its access control. Auth is immutable
// and safe for concurrent use.
//
// With a token, every request must carry "Authorization: Bearer TOKEN".
// With a client CA (mutual TLS), every request must come over a TLS
// connection whose client presented a certificate that the CA signed (the
// handshake verifies a certificate that is given; the handler refuses a
// connection without one, with a JSON error that says so). With both,
// both are required. /healthz and /readyz answer without either, so that
// load balancers and kubelet probes can use them; they reveal no secret.
type Auth struct {
	tokenSum    [sha256.Size]byte // SHA-256 of the token; compared in constant time
	hasToken    bool
	requireCert bool
}

// AuthConfig says how TCP callers authenticate; see Auth.
type AuthConfig struct {
	// TokenFile holds the bearer token (surrounding white space is
	// ignored). It must not be readable or writable by others (mode
	// 0600 or 0640): the token is the key to every volume's secrets.
	TokenFile string
	// ClientCA is a PEM file of the CAs that sign client certificates;
	// set, it turns on mutual TLS (TLSCert and TLSKey are then required).
	ClientCA string
	// TLSCert and TLSKey are the listener's PEM certificate and key;
	// set, the listener speaks HTTPS.
	TLSCert, TLSKey string
}

// NewAuth loads the token file and checks the combination. It fails, with
// an error wrapping ErrAuthConfig that says what to change, when neither
// a token nor a client CA is configured, when the token file is readable
// by others, empty or short, or when a client CA is given without the
// listener's own certificate.
func NewAuth(c AuthConfig) (*Auth, error) {
	a := &Auth{}
	if c.TokenFile == "" && c.ClientCA == "" {
		return nil, fmt.Errorf("%w: the admin API over TCP needs a bearer token (http.token_file, --http-token-file) "+
			"or mutual TLS (http.client_ca with http.tls_cert and http.tls_key), or both: the TCP API can read every CHAP secret", ErrAuthConfig)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, fmt.Errorf("%w: http.tls_cert and http.tls_key go together: give both, or neither for plain HTTP", ErrAuthConfig)
	}
	if c.ClientCA != "" && c.TLSCert == "" {
		return nil, fmt.Errorf("%w: http.client_ca (mutual TLS) needs the listener's own certificate: set http.tls_cert and http.tls_key", ErrAuthConfig)
	}
	if c.TokenFile != "" {
		tok, err := ReadTokenFile(c.TokenFile, true)
		if err != nil {
			return nil, err
		}
		a.tokenSum, a.hasToken = sha256.Sum256([]byte(tok)), true
	}
	a.requireCert = c.ClientCA != ""
	return a, nil
}

// ReadTokenFile reads a bearer token from path. With private, the file must
// not be readable or writable by others (the daemon's token file); the CLI
// reads its copy without that check. The token is the file's content
// without surrounding white space, at least MinTokenLen bytes of printable
// ASCII.
func ReadTokenFile(path string, private bool) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w: token file: %v", ErrAuthConfig, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: token file %s is not a regular file", ErrAuthConfig, path)
	}
	if private && st.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("%w: token file %s has mode %04o, which lets every user read or change it: run chmod 600 %s "+
			"(a Kubernetes Secret volume: set defaultMode: 0600)", ErrAuthConfig, path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: token file: %v", ErrAuthConfig, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < MinTokenLen {
		return "", fmt.Errorf("%w: token file %s holds %d bytes of token, fewer than %d: write a random one, e.g. `openssl rand -hex 32 > %s`",
			ErrAuthConfig, path, len(tok), MinTokenLen, path)
	}
	for _, r := range tok {
		if r < 0x21 || r > 0x7e {
			return "", fmt.Errorf("%w: token file %s: the token must be one word of printable ASCII (it goes in an HTTP header), e.g. `openssl rand -hex 32`",
				ErrAuthConfig, path)
		}
	}
	return tok, nil
}

// ServerTLSConfig returns the TLS configuration of the TCP listener, or
// nil for plain HTTP (no certificate given). With a client CA it verifies
// every client certificate presented against it; Auth.Wrap refuses
// requests that came without one.
func ServerTLSConfig(c AuthConfig) (*tls.Config, error) {
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("%w: http.tls_cert %s / http.tls_key %s: %v", ErrAuthConfig, c.TLSCert, c.TLSKey, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCA != "" {
		pool, err := loadCAs(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("%w: http.client_ca: %v", ErrAuthConfig, err)
		}
		cfg.ClientCAs = pool
		// NB: not RequireAndVerifyClientCert: a client without a
		// certificate then gets a JSON 401 saying what to do (Wrap)
		// instead of a bare handshake failure. A certificate that is
		// presented is verified during the handshake.
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// open reports whether path answers without authentication.
func open(path string) bool { return path == "/healthz" || path == "/readyz" }

// Wrap returns h behind the checks of a. A refused request gets 401 with a
// JSON error that says what to send.
func (a *Auth) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !open(r.URL.Path) {
			if msg := a.check(r); msg != "" {
				if a.hasToken {
					w.Header().Set("WWW-Authenticate", `Bearer realm="stave"`)
				}
				writeError(w, http.StatusUnauthorized, msg)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// check returns why r is refused, or "".
func (a *Auth) check(r *http.Request) string {
	if a.requireCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return "this API listener requires a client certificate signed by its http.client_ca: " +
			"give the CLI --api-cert and --api-key (and --api-ca for the server's CA)"
	}
	if !a.hasToken {
		return ""
	}
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if auth == "" || !ok {
		return "missing bearer token: send \"Authorization: Bearer TOKEN\" with the token of the daemon's http.token_file " +
			"(the CLI: --api-token-file FILE or $STAVE_API_TOKEN_FILE)"
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) != 1 {
		return "wrong bearer token: use the token in the daemon's http.token_file"
	}
	return ""
}
