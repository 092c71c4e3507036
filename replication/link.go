package replication

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// result is the outcome of one request on a link.
type result struct {
	err error
	// payload is a copy of a non-Ack reply (Digests).
	payload []byte
}

// req is one request queued on a link. It is resolved exactly once, by
// whoever holds it: fail() for queued requests, the reader or fail() for
// pending ones, the writer for the one it is encoding.
type req struct {
	msg  Message
	sent time.Time
	res  chan result // capacity 1
}

// link is the owner's connection to one replica. Three goroutines, owned
// by the Volume's WaitGroup, serve it: the writer encodes queued requests
// in order, the reader matches replies to requests, the watchdog fails the
// link when a request waits longer than the ack timeout. Any error fails
// the whole link: later requests are not sent, so a replica never applies
// a write after missing an earlier one.
type link struct {
	v    *Volume
	peer Peer
	c    net.Conn
	br   *bufio.Reader
	// size is the size the Hello announced: the replica's digests cover
	// [0, size). Writes may address more once the volume grew (Grow).
	size int64
	// isr is set while the node counts as an ISR member: its failure
	// must be removed from the ISR before a write is acknowledged.
	isr    atomic.Bool
	queue  chan *req     // bounded by QueueDepth
	slots  chan struct{} // in-flight requests, bounded by QueueDepth
	failed chan struct{} // closed by fail
	// sending counts senders between the err check and the queue send.
	sending sync.WaitGroup
	mu      struct {
		sync.Mutex
		err     error
		pending map[uint64]*req
		nextID  uint64
	}
	removeOnce sync.Once
	removeErr  error
}

// dial connects to peer, optionally over TLS, and says Hello with the
// volume's current size. A replica that has seen a higher epoch yields an
// error wrapping ErrStaleEpoch.
func (v *Volume) dial(ctx context.Context, peer Peer) (*link, error) {
	size := v.size.Load()
	c, br, err := v.hello(ctx, peer, size)
	if err != nil {
		return nil, err
	}
	l := &link{v: v, peer: peer, c: c, br: br, size: size,
		queue:  make(chan *req, v.cfg.QueueDepth),
		slots:  make(chan struct{}, v.cfg.QueueDepth),
		failed: make(chan struct{})}
	l.mu.pending = map[uint64]*req{}
	v.wg.Go(l.writeLoop)
	v.wg.Go(l.readLoop)
	v.wg.Go(l.watchdog)
	return l, nil
}

// probe says Hello to peer with size and hangs up: it succeeds once the
// replica's store holds at least size bytes (Grow).
func (v *Volume) probe(ctx context.Context, peer Peer, size int64) error {
	c, _, err := v.hello(ctx, peer, size)
	if err != nil {
		return err
	}
	return c.Close()
}

// hello connects to peer, optionally over TLS, and says Hello with size
// bytes, within DialTimeout. It returns the connection, with no deadline,
// and its reader.
func (v *Volume) hello(ctx context.Context, peer Peer, size int64) (net.Conn, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.DialTimeout)
	defer cancel()
	c, err := v.cfg.Dial(ctx, "tcp", peer.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: dial %s (%s): %v", ErrReplicaFailed, peer.Node, peer.Addr, err)
	}
	if v.cfg.TLS != nil {
		cfg := v.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(peer.Addr); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("%w: TLS with %s: %v", ErrReplicaFailed, peer.Node, err)
		}
		c = tc
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	hello := Hello{Epoch: v.cfg.Epoch, Size: uint64(size), Volume: v.cfg.Name, Node: v.cfg.Node}
	if _, err := c.Write(AppendFrame(nil, 0, hello)); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("%w: hello to %s: %v", ErrReplicaFailed, peer.Node, err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	f, _, err := ReadFrame(br, nil, MaxPayload)
	if err == nil && f.Type != TypeAck {
		err = fmt.Errorf("%w: %v answers Hello", ErrProtocol, f.Type)
	}
	var a Ack
	if err == nil {
		a, err = ParseAck(f.Payload)
	}
	if err == nil {
		err = ackErr(a, peer.Node)
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		c.Close()
		if errors.Is(err, ErrStaleEpoch) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("%w: hello to %s: %v", ErrReplicaFailed, peer.Node, err)
	}
	c.SetDeadline(time.Time{})
	return c, br, nil
}

// ackErr maps a non-OK Ack to an error.
func ackErr(a Ack, node string) error {
	switch a.Status {
	case StatusOK:
		return nil
	case StatusStaleEpoch:
		return fmt.Errorf("%w: replica %s has seen epoch %d: %s", ErrStaleEpoch, node, a.Epoch, a.Reason)
	}
	return fmt.Errorf("%w: replica %s: %v: %s", ErrReplicaFailed, node, a.Status, a.Reason)
}

func (l *link) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.err
}

// send queues m and returns the channel its result arrives on. It blocks
// while the queue is full, until the link drains or fails (the watchdog
// bounds that), and deliberately ignores the caller's context: a request
// that reaches some replicas and not others would make them diverge.
func (l *link) send(m Message) <-chan result {
	r := &req{msg: m, res: make(chan result, 1)}
	l.mu.Lock()
	if err := l.mu.err; err != nil {
		l.mu.Unlock()
		r.res <- result{err: err}
		return r.res
	}
	l.sending.Add(1)
	l.mu.Unlock()
	defer l.sending.Done()
	select {
	case l.queue <- r:
	case <-l.failed:
		r.res <- result{err: l.err()}
	}
	return r.res
}

// fail fails the link once: closes the connection and resolves every
// queued and pending request with err.
func (l *link) fail(err error) {
	l.mu.Lock()
	if l.mu.err != nil {
		l.mu.Unlock()
		return
	}
	l.mu.err = err
	pend := l.mu.pending
	l.mu.pending = nil
	l.mu.Unlock()
	close(l.failed)
	l.c.Close()
	for _, r := range pend {
		r.res <- result{err: err}
	}
	l.sending.Wait()
	for {
		select {
		case r := <-l.queue:
			r.res <- result{err: err}
		default:
			return
		}
	}
}

func (l *link) writeLoop() {
	bw := bufio.NewWriterSize(l.c, 256<<10)
	var buf []byte
	for {
		var r *req
		select {
		case r = <-l.queue:
		case <-l.failed:
			return
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.failed:
			r.res <- result{err: l.err()}
			return
		}
		l.mu.Lock()
		if err := l.mu.err; err != nil {
			l.mu.Unlock()
			r.res <- result{err: err}
			return
		}
		l.mu.nextID++
		id := l.mu.nextID
		r.sent = time.Now()
		l.mu.pending[id] = r
		l.mu.Unlock()
		buf = AppendFrame(buf[:0], id, r.msg)
		l.c.SetWriteDeadline(time.Now().Add(l.v.cfg.AckTimeout))
		_, err := bw.Write(buf)
		if err == nil && len(l.queue) == 0 {
			err = bw.Flush()
		}
		if err != nil {
			l.fail(fmt.Errorf("%w: write to %s: %v", ErrReplicaFailed, l.peer.Node, err))
			return
		}
	}
}

func (l *link) readLoop() {
	var buf []byte
	for {
		f, nb, err := ReadFrame(l.br, buf, MaxPayload)
		buf = nb
		if err != nil {
			l.fail(fmt.Errorf("%w: read from %s: %v", ErrReplicaFailed, l.peer.Node, err))
			return
		}
		l.mu.Lock()
		r := l.mu.pending[f.ID]
		delete(l.mu.pending, f.ID)
		l.mu.Unlock()
		if r == nil {
			l.fail(fmt.Errorf("%w: %s answered unknown request %d", ErrProtocol, l.peer.Node, f.ID))
			return
		}
		<-l.slots
		var res result
		switch f.Type {
		case TypeAck:
			a, err := ParseAck(f.Payload)
			if err == nil {
				err = ackErr(a, l.peer.Node)
			}
			res.err = err
		case TypeDigests:
			res.payload = append([]byte(nil), f.Payload...)
		default:
			res.err = fmt.Errorf("%w: unexpected %v from %s", ErrProtocol, f.Type, l.peer.Node)
		}
		r.res <- res
		if res.err != nil {
			l.fail(res.err)
			return
		}
	}
}

func (l *link) watchdog() {
	t := time.NewTicker(l.v.cfg.AckTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-l.failed:
			return
		case now := <-t.C:
			var oldest time.Time
			l.mu.Lock()
			for _, r := range l.mu.pending {
				if oldest.IsZero() || r.sent.Before(oldest) {
					oldest = r.sent
				}
			}
			l.mu.Unlock()
			if !oldest.IsZero() && now.Sub(oldest) > l.v.cfg.AckTimeout {
				l.fail(fmt.Errorf("%w: %s did not answer within %v", ErrReplicaFailed, l.peer.Node, l.v.cfg.AckTimeout))
				return
			}
		}
	}
}
