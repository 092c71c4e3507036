// Package adminapi is Stave's admin API: HTTP/JSON over a unix socket
// (mode 0600, no other authentication) and, optionally, TCP listeners
// (AddListener) whose callers present a bearer token or a client
// certificate, or both (Auth); served by `stave serve` and used by the CLI
// through Client.
//
// Routes (all bodies JSON; errors are {"error": "<what to fix>"} with
// status 400 invalid request, 404 not found, 405 wrong method, 409
// conflict, 500 internal):
//
//	GET    /v1/volumes          list volumes            → []Volume
//	POST   /v1/volumes          create (CreateRequest)  → 201 Volume
//	GET    /v1/volumes/{name}   one volume              → Volume
//	DELETE /v1/volumes/{name}   close its sessions, delete it → 204
//	GET    /v1/sessions         iSCSI sessions          → []Session
//	GET    /v1/volumes/{name}/connection  portals, target, LUN and CHAP secrets → Connection
//	GET    /healthz             liveness (the process answers) → Health
//	GET    /readyz              readiness (AddReadinessCheck)  → Readiness, 503 when not ready
//	GET    /metrics             Prometheus text format
//
//	POST   /v1/pool                       create the pool (PoolCreateRequest) → 201 PoolStatus
//	GET    /v1/pool                       devices, space, operations          → PoolStatus
//	POST   /v1/pool/devices               add a device (AddDeviceRequest)     → PoolStatus
//	POST   /v1/pool/replace-device        start a rebuild (ReplaceDeviceRequest) → 202 Operation
//	POST   /v1/pool/scrub                 start a scrub                       → 202 Operation
//	GET    /v1/pool/operations            running and recent operations       → []Operation
//	GET    /v1/pool/operations/{id}       one operation's progress            → Operation
//	GET    /v1/snapshots                  snapshots of every pool volume      → []Snapshot
//	GET    /v1/volumes/{name}/snapshots   one volume's snapshots              → []Snapshot
//	POST   /v1/volumes/{name}/snapshots   take one (SnapshotRequest)          → 201 Snapshot
//	DELETE /v1/volumes/{name}/snapshots/{snap}                                 → 204
//	POST   /v1/volumes/{name}/clone       new volume from a snapshot (CloneRequest) → 201 Volume
//	POST   /v1/volumes/{name}/revert      back to a snapshot (RevertRequest)  → Volume
//	POST   /v1/volumes/{name}/resize      grow it online (ResizeRequest)      → Volume
//
// Once the node has a pool, POST /v1/volumes creates volumes in it
// (CreateRequest.Policy, "k+m"); older volumes stay in their sparse files.
// Long operations run in the daemon, one at a time; the client polls
// their progress. Requests that need a pool answer 409 with NoPoolHint
// while there is none.
//
// CHAP secrets go in (CreateRequest) and come out only in Connection (for
// `stave k8s secret`), to callers of the unix socket or of an
// authenticated TCP listener; Volume carries only the user names. On a TCP
// listener every route but /healthz and /readyz needs authentication; a
// refused request gets 401 with a JSON error that says what to send.
package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"stave.dev/stave/internal/filedev"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// Sentinel errors.
var (
	// ErrSocketInUse is returned by ListenUnix when another process serves the socket.
	ErrSocketInUse = errors.New("adminapi: socket in use by a running daemon")
	// ErrBadAddress is returned for an API address that ParseAddress does
	// not accept.
	ErrBadAddress = errors.New("adminapi: address must be unix:PATH")
)

// maxBody bounds request bodies.
const maxBody = 1 << 20

// maxSocketPath is the longest unix socket path Linux accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// CreateRequest is the body of POST /v1/volumes.
type CreateRequest = volume.CreateRequest

// Volume is a volume as the API reports it. Secrets are left out.
type Volume struct {
	Name      string    `json:"name"`
	Target    string    `json:"target"`
	LUN       int       `json:"lun"`
	Size      int64     `json:"size"`
	BlockSize int       `json:"block_size"`
	Allocated int64     `json:"allocated"`
	Created   time.Time `json:"created"`
	UUID      string    `json:"uuid"`
	Serial    string    `json:"serial"`
	NAA       string    `json:"naa"`
	ACL       []string  `json:"acl,omitempty"`
	// CHAPUser is the one-way CHAP user name; empty when CHAP is off.
	CHAPUser string `json:"chap_user,omitempty"`
	// MutualCHAPUser is the target's CHAP user name for mutual CHAP.
	MutualCHAPUser string `json:"mutual_chap_user,omitempty"`
	// Sessions counts logged-in sessions to the volume's target.
	Sessions int `json:"sessions"`
	// Exported is false when the daemon could not open the volume (see
	// its log); initiators cannot log in to it then. Only meaningful
	// when Remote is false.
	Exported bool `json:"exported"`
	// Node is the ID of the node that serves the volume.
	Node string `json:"node,omitempty"`
	// Remote is true when another node serves the volume.
	Remote bool `json:"remote,omitempty"`
	// Backend is "file" (a sparse file) or "pool".
	Backend string `json:"backend"`
	// Policy is a pool volume's erasure-coding policy, "k+m".
	Policy string `json:"policy,omitempty"`
	// Origin is "VOLUME@SNAPSHOT" for a clone.
	Origin string `json:"origin,omitempty"`
	// Replication is the state of a replicated volume; nil otherwise.
	Replication *Replication `json:"replication,omitempty"`
}

// Replication is the replica state of a replicated volume.
type Replication struct {
	// Replicas are the nodes that hold a copy, the preferred owner first.
	Replicas []string `json:"replicas"`
	// Owner is the node that serves the volume now; empty while the
	// ownership moves.
	Owner string `json:"owner,omitempty"`
	// Epoch is the ownership epoch: it grows with every change of owner.
	Epoch uint64 `json:"epoch"`
	// ISR is the in-sync replica set (the owner included): the nodes that
	// have every acknowledged write.
	ISR []string `json:"isr"`
	// State is this node's role: follower, claiming, reconciling,
	// serving or fenced; empty when this node holds no copy.
	State string `json:"state,omitempty"`
	// Resync lists the replicas being brought back into the ISR, with
	// their progress, as the owner reports it.
	Resync []ResyncStatus `json:"resync,omitempty"`
	// FloatingIP is the volume's floating portal address, if any.
	FloatingIP string `json:"floating_ip,omitempty"`
}

// ResyncStatus is the progress of one replica's resync.
type ResyncStatus struct {
	Node string `json:"node"`
	// Regions is the number of regions compared so far, of Total.
	Regions int64 `json:"regions"`
	Total   int64 `json:"total"`
	// Sent is the number of regions whose content differed and was sent.
	Sent int64 `json:"sent"`
	// Bytes is the data sent so far.
	Bytes int64 `json:"bytes"`
}

// ReplicaReporter may be implemented by Targets to report the state of
// replicated volumes.
type ReplicaReporter interface {
	// ReplicaStatus returns the replication state of the named volume.
	ReplicaStatus(ctx context.Context, sp *volume.Spec) (*Replication, error)
}

// Session is one iSCSI session as the API reports it.
type Session struct {
	InitiatorName  string `json:"initiator_name"`
	InitiatorAlias string `json:"initiator_alias,omitempty"`
	TargetName     string `json:"target_name,omitempty"`
	ISID           string `json:"isid"`
	TSIH           uint16 `json:"tsih"`
	Type           string `json:"type"`
	Portal         string `json:"portal"`
	Remote         string `json:"remote"`
	Connections    int    `json:"connections"`
	// Params holds the negotiated operational parameters by RFC 7143 key
	// name (HeaderDigest, MaxBurstLength, …).
	Params map[string]string `json:"params,omitempty"`
}

// Health is the body of GET /healthz.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version"`
}

// errorBody is the body of every error response.
type errorBody struct {
	Error string `json:"error"`
}

// Targets is what the API needs from the running iSCSI target.
// Implementations must be safe for concurrent use.
type Targets interface {
	// Export starts serving a volume that was just created.
	Export(ctx context.Context, s *volume.Spec) error
	// Unexport stops serving the named volume: new logins are refused and
	// its sessions are closed before Unexport returns.
	Unexport(ctx context.Context, name string) error
	// Sessions lists the current sessions.
	Sessions() []Session
	// Exported reports whether the named volume is being served (false
	// when opening it failed at start-up; the log says why).
	Exported(name string) bool
}

// Config configures a Server.
type Config struct {
	// Logger receives request logs (Debug) and failures; nil discards.
	Logger *slog.Logger
	// Volumes is the catalogue the API manages. Required.
	Volumes *volume.Catalog
	// Targets is the running target. Required.
	Targets Targets
	// Registry is served at /metrics; nil makes a new one. Go, process and
	// build-info collectors and Stave gauges are registered on it.
	Registry *prometheus.Registry
	// Version is reported by /healthz and in stave_build_info.
	Version string
	// Pool is the node's pool; nil serves the pool routes with ErrUnsupported.
	Pool Pool
	// Placement chooses the nodes of replicated volumes; nil refuses
	// CreateRequest.Replicas above 1.
	Placement Placement
}

// Placement chooses where the copies of a replicated volume live.
type Placement interface {
	// Place returns n distinct node IDs for a new volume of size bytes,
	// the preferred owner first, starting with the nodes named (by name
	// or ID) in on, or an error that says why it cannot (an unknown or
	// unsuitable node, too few nodes that can hold replicas).
	Place(ctx context.Context, n int, size int64, on []string) ([]string, error)
}

// Server serves the admin API. It is safe for concurrent use.
type Server struct {
	log     *slog.Logger
	vols    *volume.Catalog
	targets Targets
	reg     *prometheus.Registry
	version string
	pool    Pool
	// placement chooses replica nodes; nil: no replicated volumes.
	placement Placement
	ops       *ops
	mux       *http.ServeMux

	requests *prometheus.CounterVec

	// node says how initiators reach this node (SetNode); nil until set.
	node atomic.Pointer[NodeConfig]
	// nodes lists the cluster's nodes (SetNodes, nodes.go); nil until set.
	nodes atomic.Pointer[nodesHolder]

	extraMu sync.Mutex
	extra   []listener // TCP listeners (AddListener), guarded by extraMu

	readyMu      sync.Mutex
	checks       []readinessCheck // AddReadinessCheck, guarded by readyMu
	readyTimeout time.Duration    // bounds the checks of one /readyz

	// opMu serialises create, delete, clone, revert and snapshot changes
	// so that export and unexport of one name cannot interleave.
	opMu sync.Mutex
}

// New returns a Server. It fails when a required field is missing or the
// metrics cannot be registered.
func New(cfg Config) (*Server, error) {
	if cfg.Volumes == nil || cfg.Targets == nil {
		return nil, errors.New("adminapi: Config.Volumes and Config.Targets are required")
	}
	s := &Server{log: cfg.Logger, vols: cfg.Volumes, targets: cfg.Targets, reg: cfg.Registry, version: cfg.Version,
		pool: cfg.Pool, placement: cfg.Placement, ops: newOps(), readyTimeout: defaultReadyTimeout}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stave_admin_requests_total", Help: "Admin API requests by route and HTTP status code.",
	}, []string{"route", "code"})
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
	}
	if err := s.register(); err != nil {
		return nil, err
	}
	s.AddReadinessCheck("volumes", s.volumesExported)
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("/v1/volumes", s.volumes)
	s.mux.HandleFunc("/v1/volumes/{name}", s.volume)
	s.mux.HandleFunc("/v1/volumes/{name}/snapshots", s.snapshots)
	s.mux.HandleFunc("/v1/volumes/{name}/snapshots/{snap}", s.snapshot)
	s.mux.HandleFunc("/v1/volumes/{name}/clone", s.clone)
	s.mux.HandleFunc("/v1/volumes/{name}/revert", s.revert)
	s.mux.HandleFunc("/v1/volumes/{name}/resize", s.resize) // resize.go
	s.mux.HandleFunc("/v1/snapshots", s.allSnapshots)
	s.mux.HandleFunc("/v1/pool", s.poolRoot)
	s.mux.HandleFunc("/v1/pool/devices", s.poolDevices)
	s.mux.HandleFunc("/v1/pool/replace-device", s.poolReplace)
	s.mux.HandleFunc("/v1/pool/scrub", s.poolScrub)
	s.mux.HandleFunc("/v1/pool/operations", s.poolOperations)
	s.mux.HandleFunc("/v1/pool/operations/{id}", s.poolOperation)
	s.mux.HandleFunc("/v1/volumes/{name}/connection", s.connection)
	s.mux.HandleFunc("/v1/sessions", s.sessions)
	s.mux.HandleFunc("/v1/nodes", s.nodeList)     // nodes.go
	s.mux.HandleFunc("/v1/nodes/{id}", s.nodeGet) // nodes.go
	s.mux.HandleFunc("/healthz", s.healthz)
	s.mux.HandleFunc("/readyz", s.readyz)
	s.mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such API path %s: use /v1/volumes, /v1/pool, /v1/snapshots, /v1/sessions, /healthz, /readyz or /metrics", r.URL.Path))
	})
	return s, nil
}

func (s *Server) register() error {
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stave_volumes", Help: "Number of volumes in the catalogue.",
		}, func() float64 { return float64(len(s.vols.List())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stave_iscsi_sessions", Help: "Number of iSCSI sessions (normal and discovery).",
		}, func() float64 { return float64(len(s.targets.Sessions())) }),
		newVolumeCollector(s),
		newSessionCollector(s),
		s.requests,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "stave_info", Help: "Stave version, always 1.",
			ConstLabels: prometheus.Labels{"version": s.version},
		}, func() float64 { return 1 }),
	}
	for _, c := range cs {
		if err := s.reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue // Go/process collectors may already be on a shared registry.
			}
			return fmt.Errorf("adminapi: metrics: %w", err)
		}
	}
	return nil
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		s.mux.ServeHTTP(sw, r)
		_, route := s.mux.Handler(r)
		if route == "" || route == "/" {
			route = "other" // bound the label's cardinality
		}
		s.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		if s.log.Enabled(r.Context(), slog.LevelDebug) {
			s.log.Debug("admin request", logkey.Method, r.Method, logkey.Op, r.URL.Path, logkey.Status, sw.code)
		}
	})
}

// statusWriter records the status code of a response.
type statusWriter struct {
	http.ResponseWriter
	code int
}

// WriteHeader records code and passes it on.
func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sessionCollector reports one series per iSCSI session at scrape time.
type sessionCollector struct {
	s     *Server
	conns *prometheus.Desc
}

func newSessionCollector(s *Server) sessionCollector {
	return sessionCollector{s: s, conns: prometheus.NewDesc("stave_iscsi_session_connections",
		"Connections of one iSCSI session (type Normal or Discovery; target empty for discovery).",
		[]string{"initiator", "isid", "tsih", "target", "portal", "type"}, nil)}
}

// Describe implements prometheus.Collector.
func (c sessionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.conns }

// Collect implements prometheus.Collector.
func (c sessionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ss := range c.s.targets.Sessions() {
		m, err := prometheus.NewConstMetric(c.conns, prometheus.GaugeValue, float64(ss.Connections),
			ss.InitiatorName, ss.ISID, strconv.Itoa(int(ss.TSIH)), ss.TargetName, ss.Portal, ss.Type)
		if err == nil {
			ch <- m
		}
	}
}

// volumeCollector reports per-volume size and allocation at scrape time.
type volumeCollector struct {
	s          *Server
	size, used *prometheus.Desc
}

func newVolumeCollector(s *Server) volumeCollector {
	return volumeCollector{s: s,
		size: prometheus.NewDesc("stave_volume_size_bytes", "Volume capacity in bytes.", []string{"volume"}, nil),
		used: prometheus.NewDesc("stave_volume_allocated_bytes",
			"Bytes of the volume's mapped blocks (a file volume: bytes its sparse file occupies).", []string{"volume"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.used
}

// Collect implements prometheus.Collector.
func (c volumeCollector) Collect(ch chan<- prometheus.Metric) {
	emit := func(d *prometheus.Desc, v float64, name string) {
		if m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, name); err == nil {
			ch <- m
		}
	}
	for _, sp := range c.s.vols.List() {
		emit(c.size, float64(sp.Size), sp.Name)
		if n, ok := c.s.allocated(sp); ok {
			emit(c.used, float64(n), sp.Name)
		}
	}
}

// ListenUnix creates the unix socket at path with mode 0600. A stale
// socket file left by a dead daemon is replaced; a live one is an error
// wrapping ErrSocketInUse.
func ListenUnix(path string) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("adminapi: socket path %s is %d bytes, longer than the %d a unix socket allows: use a shorter --api path",
			path, len(path), maxSocketPath)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("%w: %s: stop the other 'stave serve' or use another --api", ErrSocketInUse, path)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("adminapi: %s exists and is not a socket: remove it or use another --api", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("adminapi: %w", err)
		}
	}
	// Create the socket with no group/other bits from the start. NB: the
	// umask is process-wide; a file another goroutine creates meanwhile
	// only gets stricter permissions. Call ListenUnix during start-up.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("adminapi: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("adminapi: %w", err)
	}
	return ln, nil
}

// Serve serves the API on ln (the unix socket) and on every listener
// added with AddListener until ctx is done, then shuts down, waiting up to
// five seconds for requests in flight, and cancels long operations and
// waits for them (Close). It closes every listener. If one listener fails,
// Serve stops the others and returns the error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	type served struct {
		hs *http.Server
		ln net.Listener
	}
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			// Requests in flight at shutdown finish (Shutdown bounds the
			// wait) rather than stop half-way through a create or delete.
			BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
			ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
	}
	all := []served{{newServer(s.Handler()), ln}}
	for _, x := range s.listeners() {
		all = append(all, served{newServer(x.auth.Wrap(s.Handler())), x.ln})
	}
	done := make(chan error, len(all))
	for _, sv := range all {
		go func() { done <- sv.hs.Serve(sv.ln) }()
	}
	defer s.Close()
	var failed error
	select {
	case err := <-done:
		failed = fmt.Errorf("adminapi: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var errs []error
	for _, sv := range all {
		if err := sv.hs.Shutdown(sctx); err != nil {
			_ = sv.hs.Close()
			errs = append(errs, fmt.Errorf("adminapi: shutdown: %w", err))
		}
	}
	for range len(all) - btoi(failed != nil) {
		<-done
	}
	if failed != nil {
		return failed
	}
	return errors.Join(errs...)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Close cancels the long operations (replace-device, scrub) and waits for
// them to return; later ones are refused. Serve calls it on its way out.
// The caller closes the pool after Close.
func (s *Server) Close() { s.ops.close() }

func (s *Server) volumes(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		specs := s.vols.List()
		counts := s.sessionCounts()
		out := make([]Volume, 0, len(specs))
		for _, sp := range specs {
			out = append(out, s.toVolume(sp, counts))
		}
		writeJSON(w, http.StatusOK, out)
	case http.MethodPost:
		var req CreateRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "bad JSON body for a volume create request: "+err.Error())
			return
		}
		s.create(w, r, req)
	default:
		methodNotAllowed(w, "GET, POST")
	}
}

// create makes a volume: in the pool when the node has one (catalogue
// entry first, then the pool volume, then the export; each failure undoes
// the steps before it), else in a sparse file.
func (s *Server) create(w http.ResponseWriter, r *http.Request, req CreateRequest) {
	req.Backend, req.Origin = "", ""
	if err := req.Validate(); err != nil {
		s.fail(w, "create volume", err)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if req.Replicas > 1 {
		s.createReplicated(w, r, req)
		return
	}
	inPool := s.pool != nil && s.pool.Exists()
	var pol volume.Policy
	if inPool {
		var err error
		if pol, err = s.pool.ResolvePolicy(req.Policy); err != nil {
			s.fail(w, "create volume", err)
			return
		}
		req.Backend, req.Policy = volume.BackendPool, pol.String()
	} else if req.Policy != "" {
		s.fail(w, "create volume", fmt.Errorf("%w: --policy %s needs a pool; %s", ErrNoPool, req.Policy, NoPoolHint))
		return
	}
	sp, err := s.vols.Create(r.Context(), req)
	if err != nil {
		s.fail(w, "create volume", err)
		return
	}
	if inPool {
		if err := s.pool.CreateVolume(r.Context(), sp.Name, sp.Size, pol); err != nil {
			s.rollbackCreate(r.Context(), sp.Name, false)
			s.fail(w, "create volume", err)
			return
		}
	}
	if !s.export(w, r, sp) {
		return
	}
	writeJSON(w, http.StatusCreated, s.toVolume(sp, nil))
}

// createReplicated makes a volume with a copy on each of req.Replicas
// nodes: placement, then the catalogue entry (every chosen node's
// reconcile loop opens its copy), then the local export when this node
// is one of them.
// REQUIRES: s.opMu held.
func (s *Server) createReplicated(w http.ResponseWriter, r *http.Request, req CreateRequest) {
	if req.Policy != "" {
		s.fail(w, "create volume", fmt.Errorf("%w: --policy applies to pool volumes; a replicated volume keeps whole copies (in files, for now): drop --policy",
			volume.ErrInvalid))
		return
	}
	if s.placement == nil {
		s.fail(w, "create volume", fmt.Errorf("%w: this daemon cannot place replicas (no cluster)", ErrUnsupported))
		return
	}
	nodes, err := s.placement.Place(r.Context(), req.Replicas, req.Size, req.On)
	if err != nil {
		s.fail(w, "create volume", err)
		return
	}
	req.Backend, req.Nodes = volume.BackendReplicated, nodes
	sp, err := s.vols.Create(r.Context(), req)
	if err != nil {
		s.fail(w, "create volume", err)
		return
	}
	if s.vols.Local(sp) {
		if !s.export(w, r, sp) {
			return
		}
	} else {
		s.vols.Settle(sp.Name) // the chosen nodes' reconcile loops open it
	}
	writeJSON(w, http.StatusCreated, s.toVolume(sp, nil))
}

// export exports a volume just made; on failure it deletes the volume and
// writes the error.
func (s *Server) export(w http.ResponseWriter, r *http.Request, sp *volume.Spec) bool {
	err := s.targets.Export(r.Context(), sp)
	if err == nil {
		return true
	}
	s.log.Error("export of new volume failed; deleting it", logkey.Volume, sp.Name, logkey.Err, err)
	s.rollbackCreate(r.Context(), sp.Name, sp.InPool())
	writeError(w, http.StatusInternalServerError, fmt.Sprintf("volume %q could not be exported: %v", sp.Name, err))
	return false
}

// rollbackCreate deletes a volume whose creation failed half-way.
func (s *Server) rollbackCreate(ctx context.Context, name string, inPool bool) {
	ctx = context.WithoutCancel(ctx)
	if inPool {
		if err := s.pool.DeleteVolume(ctx, name); err != nil {
			s.log.Error("pool delete after failed create", logkey.Volume, name, logkey.Err, err)
		}
	}
	if err := s.vols.Delete(ctx, name); err != nil {
		s.log.Error("delete after failed create", logkey.Volume, name, logkey.Err, err)
	}
}

func (s *Server) volume(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	switch r.Method {
	case http.MethodGet:
		sp, err := s.vols.Get(name)
		if err != nil {
			s.fail(w, "get volume", err)
			return
		}
		writeJSON(w, http.StatusOK, s.toVolume(sp, s.sessionCounts()))
	case http.MethodDelete:
		s.opMu.Lock()
		defer s.opMu.Unlock()
		sp, err := s.vols.Get(name)
		if err != nil {
			s.fail(w, "delete volume", err)
			return
		}
		if err := s.targets.Unexport(r.Context(), name); err != nil {
			s.fail(w, "delete volume", fmt.Errorf("stopping the target of volume %q: %w", name, err))
			return
		}
		if sp.InPool() {
			if s.pool == nil || !s.pool.Exists() {
				s.fail(w, "delete volume", fmt.Errorf("%w: volume %q lives in the pool, which this daemon has not got", ErrConflict, name))
				return
			}
			// A volume catalogued but missing from the pool (a create
			// interrupted by a crash) is deleted from the catalogue.
			if err := s.pool.DeleteVolume(r.Context(), name); err != nil && !errors.Is(err, volume.ErrNotFound) {
				if eerr := s.targets.Export(context.WithoutCancel(r.Context()), sp); eerr != nil {
					s.log.Error("re-export after failed delete", logkey.Volume, name, logkey.Err, eerr)
				}
				s.fail(w, "delete volume", err)
				return
			}
		}
		if err := s.vols.Delete(r.Context(), name); err != nil {
			s.fail(w, "delete volume", err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		methodNotAllowed(w, "GET, DELETE")
	}
}

func (s *Server) sessions(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	ss := s.targets.Sessions()
	if ss == nil {
		ss = []Session{}
	}
	writeJSON(w, http.StatusOK, ss)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET")
		return
	}
	writeJSON(w, http.StatusOK, Health{Status: "ok", Version: s.version})
}

func (s *Server) sessionCounts() map[string]int {
	m := make(map[string]int)
	for _, ss := range s.targets.Sessions() {
		if ss.TargetName != "" {
			m[ss.TargetName]++
		}
	}
	return m
}

func (s *Server) toVolume(sp *volume.Spec, counts map[string]int) Volume {
	v := Volume{
		Name: sp.Name, Target: sp.TargetName(), Size: sp.Size, BlockSize: sp.BlockSize,
		Created: sp.Created, UUID: sp.UUID, Serial: sp.Serial, NAA: sp.NAA, ACL: sp.ACL,
		Sessions: counts[sp.TargetName()], Exported: s.targets.Exported(sp.Name),
		Node: sp.Node, Remote: !s.vols.Local(sp),
	}
	if sp.CHAP != nil {
		v.CHAPUser = sp.CHAP.User
		v.MutualCHAPUser = sp.CHAP.MutualUser
	}
	v.Backend, v.Policy, v.Origin = sp.Backend, sp.Policy, sp.Origin
	if v.Backend == "" {
		v.Backend = volume.BackendFile
	}
	v.Allocated, _ = s.allocated(sp)
	if sp.Replicated() {
		v.Replication = &Replication{Replicas: sp.Replicas, FloatingIP: sp.FloatingIP}
		if rr, ok := s.targets.(ReplicaReporter); ok {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if st, err := rr.ReplicaStatus(ctx, sp); err == nil {
				st.FloatingIP = sp.FloatingIP
				v.Replication = st
			} else {
				s.log.Warn("replication state of a volume unknown", logkey.Volume, sp.Name, logkey.Err, err)
			}
			cancel()
		}
	}
	return v
}

// allocated returns the bytes a volume's data occupies.
func (s *Server) allocated(sp *volume.Spec) (int64, bool) {
	if sp.Replicated() {
		// This node's copy: in the pool, or a file on a node without one.
		if s.pool != nil {
			if n, ok := s.pool.Allocated(sp.ReplicaCopyName()); ok {
				return n, true
			}
		}
		n, err := filedev.Allocated(filepath.Join(s.vols.Dir(sp.Name), "replica", "data"))
		return n, err == nil
	}
	if sp.InPool() {
		if s.pool == nil {
			return 0, false
		}
		return s.pool.Allocated(sp.Name)
	}
	n, err := filedev.Allocated(s.vols.DataPath(sp.Name))
	return n, err == nil
}

// fail maps a catalogue error to a status and writes it.
func (s *Server) fail(w http.ResponseWriter, op string, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, volume.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, volume.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, volume.ErrExists), errors.Is(err, ErrConflict), errors.Is(err, ErrNoPool):
		code = http.StatusConflict
	case errors.Is(err, ErrUnsupported):
		code = http.StatusNotImplemented
	}
	if code == http.StatusInternalServerError {
		s.log.Error("admin request failed", logkey.Op, op, logkey.Err, err)
	}
	writeError(w, code, userMessage(err))
}

// userMessage strips the "volume: <class>: " prefix of catalogue errors,
// which the status code already conveys.
func userMessage(err error) string {
	msg := err.Error()
	for _, e := range []error{volume.ErrInvalid, volume.ErrNotFound, volume.ErrExists, ErrConflict, ErrNoPool, ErrUnsupported} {
		if rest, ok := strings.CutPrefix(msg, e.Error()+": "); ok {
			return rest
		}
	}
	return msg
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method not allowed: use "+allow)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // The client has gone if this fails; nothing to do.
}
