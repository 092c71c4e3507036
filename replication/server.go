package replication

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"stave.dev/stave/internal/logkey"
)

// ServerConfig configures a replica Server.
type ServerConfig struct {
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
	// Node is this node's name (for logs).
	Node string
	// Epochs persists the highest epoch per volume. Required.
	Epochs *EpochStore
	// Lookup returns the local store of a volume this node replicates.
	Lookup func(volume string) (Store, bool)
	// TLS, when set, makes Serve speak TLS on the listener.
	TLS *tls.Config
	// MaxPayload caps frame payloads; zero means MaxPayload.
	MaxPayload int
	// WriteTimeout bounds writing one reply; zero means 10s.
	WriteTimeout time.Duration
}

// Server is the replica side of the protocol: it accepts connections from
// owners, checks epochs and applies requests to local stores. Safe for
// concurrent use.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	mu  struct {
		sync.Mutex
		gates map[string]*sync.RWMutex
	}
}

// NewServer returns a Server.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = MaxPayload
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With(logkey.Component, "replica", logkey.Node, cfg.Node)}
	s.mu.gates = map[string]*sync.RWMutex{}
	return s
}

// Serve accepts connections on ln until ctx is done, then closes ln and
// every connection and waits for their goroutines. It returns nil after
// ctx is done, or the accept error that stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.cfg.TLS != nil {
		ln = tls.NewListener(ln, s.cfg.TLS)
	}
	// Deferred in this order: cancel (closing the listener and every
	// connection) runs before the wait.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
	})
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("replication: accept: %w", err)
		}
		wg.Go(func() {
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			defer c.Close()
			if err := s.serveConn(ctx, c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("replication connection ended", logkey.Remote, c.RemoteAddr().String(), logkey.Err, err)
			}
		})
	}
}

// gate returns the lock that orders epoch raises against applies of one
// volume: applies hold it shared, a raise holds it exclusively.
func (s *Server) gate(volume string) *sync.RWMutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.mu.gates[volume]
	if g == nil {
		g = &sync.RWMutex{}
		s.mu.gates[volume] = g
	}
	return g
}

// admit checks epoch against the highest persisted one for volume,
// persisting a higher one first. On success the gate is held shared until
// release is called, so no raise can slip between the check and the apply.
func (s *Server) admit(volume string, g *sync.RWMutex, epoch uint64) (release func(), highest uint64, err error) {
	for {
		g.RLock()
		cur, err := s.cfg.Epochs.Get(volume)
		if err != nil {
			g.RUnlock()
			return nil, 0, err
		}
		if epoch < cur {
			g.RUnlock()
			return nil, cur, ErrStaleEpoch
		}
		if epoch == cur {
			return g.RUnlock, cur, nil
		}
		g.RUnlock()
		g.Lock()
		_, err = s.cfg.Epochs.Raise(volume, epoch)
		g.Unlock()
		if err != nil {
			return nil, 0, err
		}
		s.log.Info("epoch raised", logkey.Volume, volume, logkey.Epoch, epoch)
	}
}

// conn is the state of one owner connection, owned by serveConn.
type conn struct {
	s      *Server
	c      net.Conn
	volume string
	store  Store
	gate   *sync.RWMutex
	epoch  uint64
	// size is the owner's size (Hello): digests cover [0, size).
	size int64
	out  []byte
}

// Bounds of one connection's pipeline: requests read and not yet
// answered, and their payload bytes (the reader stops reading at either).
const (
	maxInflight      = 64
	maxInflightBytes = 64 << 20
)

// serveConn runs one connection: Hello first, then requests, each applied
// and durable before its Ack. Requests are pipelined: the reader parses
// each and starts it in a goroutine of its own once every earlier request
// it depends on is done, and one replier sends the answers in arrival
// order. A Write, Unmap or RegionData depends on the earlier requests
// whose blocks overlap its own, so the blocks end as the owner sent them;
// Flush and DigestReq are barriers (they depend on every earlier request,
// and every later one on them), so a Flush covers everything before it
// and digests see every earlier write. Independent writes then share the
// store's syncs (group commit) instead of paying one each.
func (s *Server) serveConn(ctx context.Context, c net.Conn) error {
	br := bufio.NewReaderSize(c, 256<<10)
	// The TLS handshake and the Hello must not take forever.
	c.SetReadDeadline(time.Now().Add(s.cfg.WriteTimeout))
	f, _, err := ReadFrame(br, nil, s.cfg.MaxPayload)
	if err != nil {
		return err
	}
	c.SetReadDeadline(time.Time{})
	cn := &conn{s: s, c: c}
	if f.Type != TypeHello {
		return fmt.Errorf("%w: %v before Hello", ErrProtocol, f.Type)
	}
	h, err := ParseHello(f.Payload)
	if err != nil {
		return err
	}
	st, ok := s.cfg.Lookup(h.Volume)
	if !ok {
		return cn.reply(f.ID, Ack{Status: StatusUnknownVolume, Reason: h.Volume})
	}
	// The owner addresses [0, its size): a store grown ahead of it (an
	// online grow in progress) is fine, a smaller one is not.
	if uint64(st.Size()) < h.Size {
		return cn.reply(f.ID, Ack{Status: StatusInvalid, Reason: fmt.Sprintf("owner's size %d, replica has only %d", h.Size, st.Size())})
	}
	cn.volume, cn.store, cn.gate, cn.epoch, cn.size = h.Volume, st, s.gate(h.Volume), h.Epoch, int64(h.Size)
	release, highest, err := s.admit(h.Volume, cn.gate, h.Epoch)
	if err != nil {
		cn.reply(f.ID, cn.nack(err, highest))
		return err
	}
	release()
	s.log.Info("owner connected", logkey.Volume, h.Volume, logkey.Epoch, h.Epoch, logkey.Owner, h.Node, logkey.Remote, c.RemoteAddr().String())
	if err := cn.reply(f.ID, Ack{Status: StatusOK, Epoch: highest}); err != nil {
		return err
	}
	return cn.pipeline(ctx, br)
}

// request is one parsed request of a connection's pipeline.
type request struct {
	id      uint64
	epoch   uint64
	apply   func() (Message, error) // the store call; a nil Message is a plain Ack
	b0, b1  int64                   // the blocks it changes, [b0, b1)
	barrier bool                    // Flush, DigestReq: ordered against everything
	bytes   int
	answer  Message
	done    chan struct{} // closed once answer is set
}

// dependsOn reports whether r must wait for the earlier request p.
func (r *request) dependsOn(p *request) bool {
	return r.barrier || p.barrier || (r.b0 < p.b1 && p.b0 < r.b1)
}

// pipeline reads and runs requests until the connection ends; it returns
// once every request it started is done and answered (or the connection
// cannot be written any more).
func (cn *conn) pipeline(ctx context.Context, br *bufio.Reader) error {
	var (
		slots    = make(chan struct{}, maxInflight)
		answers  = make(chan *request, maxInflight)
		wg       sync.WaitGroup
		replied  = make(chan error, 1)
		bytesMu  sync.Mutex
		bytesCnd = sync.NewCond(&bytesMu)
		inBytes  int
		pending  []*request // started, in arrival order; done ones pruned
	)
	// The replier: answers in arrival order. After a write error it
	// closes the connection (which ends the reader) and keeps draining.
	go func() {
		var werr error
		for r := range answers {
			<-r.done
			if werr == nil {
				if werr = cn.reply(r.id, r.answer); werr != nil {
					cn.c.Close()
				}
			}
			bytesMu.Lock()
			inBytes -= r.bytes
			bytesCnd.Broadcast()
			bytesMu.Unlock()
			<-slots
		}
		replied <- werr
	}()
	var rerr error
	for {
		slots <- struct{}{} // the replier frees slots, whatever happens
		bytesMu.Lock()
		for inBytes >= maxInflightBytes {
			bytesCnd.Wait()
		}
		bytesMu.Unlock()
		// A fresh buffer per frame: its payload stays in use until the
		// request is done.
		f, _, err := ReadFrame(br, nil, cn.s.cfg.MaxPayload)
		if err == nil {
			var r *request
			if r, err = cn.parse(ctx, f); err == nil {
				var deps []chan struct{}
				live := pending[:0]
				for _, p := range pending {
					select {
					case <-p.done:
						continue
					default:
					}
					live = append(live, p)
					if r.dependsOn(p) {
						deps = append(deps, p.done)
					}
				}
				pending = append(live, r)
				bytesMu.Lock()
				inBytes += r.bytes
				bytesMu.Unlock()
				answers <- r
				wg.Go(func() {
					for _, d := range deps {
						<-d
					}
					r.answer = cn.exec(r)
					close(r.done)
				})
				continue
			}
		}
		<-slots
		rerr = err
		break
	}
	wg.Wait()
	close(answers)
	if werr := <-replied; werr != nil {
		return werr
	}
	return rerr
}

func (cn *conn) reply(id uint64, m Message) error {
	cn.out = AppendFrame(cn.out[:0], id, m)
	cn.c.SetWriteDeadline(time.Now().Add(cn.s.cfg.WriteTimeout))
	_, err := cn.c.Write(cn.out)
	return err
}

func (cn *conn) nack(err error, highest uint64) Ack {
	switch {
	case errors.Is(err, ErrStaleEpoch):
		return Ack{Status: StatusStaleEpoch, Epoch: highest, Reason: err.Error()}
	case errors.Is(err, ErrProtocol):
		return Ack{Status: StatusInvalid, Epoch: highest, Reason: err.Error()}
	}
	return Ack{Status: StatusIOError, Epoch: highest, Reason: err.Error()}
}

// parse checks one request and prepares its store call. A returned error
// (protocol violation) drops the connection.
func (cn *conn) parse(ctx context.Context, f Frame) (*request, error) {
	r := &request{id: f.ID, bytes: len(f.Payload), done: make(chan struct{})}
	var epoch uint64
	var apply func() error
	var answer Message
	switch f.Type {
	case TypeWrite:
		m, err := ParseWrite(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = EpochOf(m.Version)
		off := int64(m.LBA) * SectorSize
		r.b0, r.b1 = off/BlockSize, (off+int64(len(m.Data))+BlockSize-1)/BlockSize
		apply = func() error {
			return cn.store.WriteAt(ctx, m.Data, off, m.Version)
		}
	case TypeUnmap:
		m, err := ParseUnmap(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = EpochOf(m.Version)
		off, n := int64(m.LBA)*SectorSize, int64(m.Sectors)*SectorSize
		r.b0, r.b1 = off/BlockSize, (off+n+BlockSize-1)/BlockSize
		apply = func() error {
			return cn.store.Unmap(ctx, off, n, m.Version)
		}
	case TypeFlush:
		m, err := ParseFlush(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = m.Epoch
		r.barrier = true
		apply = func() error { return cn.store.Flush(ctx) }
	case TypeDigestReq:
		m, err := ParseDigestReq(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = m.Epoch
		r.barrier = true
		apply = func() error {
			d, err := regionDigests(ctx, cn.store, cn.size, int64(m.RegionSize), m.First, int(m.Count))
			answer = Digests{First: m.First, Digests: d}
			return err
		}
	case TypeRegionData:
		m, err := ParseRegionData(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = m.Epoch
		first := int64(m.Region) * int64(m.RegionSize) / BlockSize
		r.b0, r.b1 = first, first+int64(len(m.Versions))
		apply = func() error {
			return cn.store.SetBlocks(ctx, first, m.Versions, m.Data)
		}
	default:
		return nil, fmt.Errorf("%w: unexpected %v", ErrProtocol, f.Type)
	}
	if epoch != cn.epoch {
		return nil, fmt.Errorf("%w: %v of epoch %d on a connection of epoch %d", ErrProtocol, f.Type, epoch, cn.epoch)
	}
	r.epoch = epoch
	r.apply = func() (Message, error) {
		err := apply()
		return answer, err
	}
	return r, nil
}

// exec admits r's epoch (no raise slips between the check and the store
// call) and applies it, and returns its answer: the store's, an Ack, or a
// nack for a stale epoch or a store error.
func (cn *conn) exec(r *request) Message {
	release, highest, err := cn.s.admit(cn.volume, cn.gate, r.epoch)
	if err != nil {
		return cn.nack(err, highest)
	}
	answer, err := r.apply()
	release()
	if err != nil {
		cn.s.log.Error("replica store failed", logkey.Volume, cn.volume, logkey.Err, err)
		return cn.nack(err, highest)
	}
	if answer != nil {
		return answer
	}
	return Ack{Status: StatusOK, Epoch: highest}
}

// regionDigests returns the digests of count regions from first of the
// first size bytes of st (the owner's size; the store may be larger).
func regionDigests(ctx context.Context, st Store, size, regionSize int64, first uint64, count int) ([]byte, error) {
	if regionSize <= 0 || regionSize%BlockSize != 0 || count < 0 || count > MaxPayload/DigestSize {
		return nil, fmt.Errorf("%w: digest request for %d regions of %d bytes", ErrProtocol, count, regionSize)
	}
	per := regionSize / BlockSize
	total := (size + BlockSize - 1) / BlockSize
	vers := make([]uint64, per)
	out := make([]byte, 0, count*DigestSize)
	for i := range count {
		b0 := (int64(first) + int64(i)) * per
		if b0 >= total {
			return nil, fmt.Errorf("%w: region %d outside the volume", ErrProtocol, int64(first)+int64(i))
		}
		n := min(per, total-b0)
		if err := st.Versions(ctx, b0, vers[:n]); err != nil {
			return nil, err
		}
		d := RegionDigest(vers[:n])
		out = append(out, d[:]...)
	}
	return out, nil
}
