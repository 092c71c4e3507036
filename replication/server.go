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

// serveConn runs one connection: Hello first, then requests in order, each
// applied and durable before its Ack. One goroutine does both reading and
// replying: requests are applied strictly in arrival order, which the
// owner's per-block ordering relies on, so a separate writer would add
// nothing.
func (s *Server) serveConn(ctx context.Context, c net.Conn) error {
	br := bufio.NewReaderSize(c, 256<<10)
	var buf []byte
	// The TLS handshake and the Hello must not take forever.
	c.SetReadDeadline(time.Now().Add(s.cfg.WriteTimeout))
	f, buf, err := ReadFrame(br, buf, s.cfg.MaxPayload)
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
	for {
		f, buf, err = ReadFrame(br, buf, s.cfg.MaxPayload)
		if err != nil {
			return err
		}
		a, err := cn.handle(ctx, f)
		if err != nil {
			return err
		}
		if err := cn.reply(f.ID, a); err != nil {
			return err
		}
	}
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

// handle applies one request and returns its answer. A returned error
// (protocol violation) drops the connection.
func (cn *conn) handle(ctx context.Context, f Frame) (Message, error) {
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
		apply = func() error {
			return cn.store.WriteAt(ctx, m.Data, int64(m.LBA)*SectorSize, m.Version)
		}
	case TypeUnmap:
		m, err := ParseUnmap(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = EpochOf(m.Version)
		apply = func() error {
			return cn.store.Unmap(ctx, int64(m.LBA)*SectorSize, int64(m.Sectors)*SectorSize, m.Version)
		}
	case TypeFlush:
		m, err := ParseFlush(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = m.Epoch
		apply = func() error { return cn.store.Flush(ctx) }
	case TypeDigestReq:
		m, err := ParseDigestReq(f.Payload)
		if err != nil {
			return nil, err
		}
		epoch = m.Epoch
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
		apply = func() error {
			first := int64(m.Region) * int64(m.RegionSize) / BlockSize
			return cn.store.SetBlocks(ctx, first, m.Versions, m.Data)
		}
	default:
		return nil, fmt.Errorf("%w: unexpected %v", ErrProtocol, f.Type)
	}
	if epoch != cn.epoch {
		return nil, fmt.Errorf("%w: %v of epoch %d on a connection of epoch %d", ErrProtocol, f.Type, epoch, cn.epoch)
	}
	release, highest, err := cn.s.admit(cn.volume, cn.gate, epoch)
	if err != nil {
		return cn.nack(err, highest), nil
	}
	err = apply()
	release()
	if err != nil {
		cn.s.log.Error("replica store failed", logkey.Volume, cn.volume, logkey.Err, err)
		return cn.nack(err, highest), nil
	}
	if answer != nil {
		return answer, nil
	}
	return Ack{Status: StatusOK, Epoch: highest}, nil
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
