package iscsi

import (
	"context"
	"encoding/binary"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

// maxTaskBuffer bounds the Data-Out buffer of one command. Larger writes
// end with CHECK CONDITION INVALID FIELD IN CDB without reading their data.
// The buffer grows as data arrives (from at most initialTaskBuffer), so an
// initiator cannot make the target allocate memory it does not fill.
const (
	maxTaskBuffer     = 256 << 20
	initialTaskBuffer = 1 << 20
)

// r2tState is one outstanding R2T (RFC 7143 §11.8).
type r2tState struct {
	ttt    uint32
	offset uint32
	length uint32
	got    uint32
	dataSN uint32 // next expected DataSN of the sequence
}

// task is one SCSI command. Fields are guarded by the session's mu until
// the task starts; after that the task goroutine owns sc and res, and the
// writer releases the task once its last PDU is written.
type task struct {
	s   *session
	c   *conn
	seq uint64

	itt       uint32
	cmdSN     uint32
	immediate bool
	read      bool
	write     bool
	edtl      uint32
	sc        scsi.Task
	cdb       [16]byte
	ext       []byte

	collect  bool    // Data-Out is being collected into buf
	bufp     *[]byte // pooled backing of buf
	buf      []byte  // write data received so far, grows to edtl
	received uint32

	unsolOpen   bool // unsolicited Data-Out (TTT 0xffffffff) expected
	unsolLimit  uint32
	unsolNext   uint32
	unsolDataSN uint32

	r2tNext uint32
	r2tSN   uint32
	r2ts    []r2tState

	delivered bool // in CmdSN order
	counted   bool // counted in session active
	started   bool
	running   bool // handed to the device (counted in s.mu.running)
	aborted   bool

	senseBuf [2 + 252]byte
	// release returns the device's Data-In buffer (scsi.Result.Release);
	// called once by unref.
	release func()
}

// bufPools holds power-of-two buffer classes from 4 KiB to maxTaskBuffer,
// and a pool of task structs.
type bufPools struct {
	class [13]sync.Pool // 4K << i
	tasks sync.Pool
	live  atomic.Int64 // tasks handed out and not yet released (leak checks)
}

func bufClass(n int) int {
	if n <= 4096 {
		return 0
	}
	return bits.Len(uint(n-1)) - 12
}

// get returns a buffer of capacity at least n (len n). The pointer goes
// back with put, so pooling does not allocate.
func (p *bufPools) get(n int) *[]byte {
	i := bufClass(n)
	if i >= len(p.class) {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.class[i].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 4096<<i)
	return &b
}

// put returns a buffer from get; buffers of other sizes are dropped.
func (p *bufPools) put(bp *[]byte) {
	if bp == nil {
		return
	}
	c := cap(*bp)
	i := bufClass(c)
	if i >= len(p.class) || c != 4096<<i {
		return
	}
	p.class[i].Put(bp)
}

func (p *bufPools) newTask() *task {
	p.live.Add(1)
	if t, ok := p.tasks.Get().(*task); ok {
		return t
	}
	return &task{r2ts: make([]r2tState, 0, 8)}
}

// unref releases the task's buffers and returns it to the pool. It is
// called exactly once: by the writer after the task's last PDU, when the
// connection drops the PDU, or for tasks that never answer.
func (t *task) unref() {
	s := t.s
	s.srv.pools.put(t.bufp)
	if t.release != nil {
		t.release()
	}
	r2ts := t.r2ts[:0]
	*t = task{r2ts: r2ts}
	s.srv.pools.live.Add(-1)
	s.srv.pools.tasks.Put(t)
}

// taskAttr maps the iSCSI ATTR field (RFC 7143 §11.3.1: 0 untagged,
// 1 simple, 2 ordered, 3 head of queue, 4 ACA) to the SAM task attribute.
func taskAttr(a uint8) scsi.TaskAttr {
	switch a {
	case 2:
		return scsi.TaskOrdered
	case 3:
		return scsi.TaskHeadOfQueue
	case 4:
		return scsi.TaskACA
	}
	return scsi.TaskSimple
}

// decodeLUN decodes the 8-byte LUN field (SAM-5 §4.7): single-level
// peripheral and flat addressing give (byte0&0x3f)<<8 | byte1; anything
// else is returned raw (and will not match a configured LU).
func decodeLUN(raw uint64) uint64 {
	if raw&0x0000ffffffffffff != 0 {
		return raw
	}
	b0, b1 := uint8(raw>>56), uint8(raw>>48)
	switch b0 >> 6 {
	case 0, 1:
		return uint64(b0&0x3f)<<8 | uint64(b1)
	}
	return raw
}

// command handles a SCSI Command PDU (RFC 7143 §11.3).
func (s *session) command(ctx context.Context, c *conn, p *PDU) error {
	h := p.BHS
	itt := h.ITT()
	if itt == reservedTag {
		return c.protocolError(h, RejectInvalidPDUField, "reserved ITT")
	}
	edtl := h.ExpectedDataTransferLength()
	imm := h.Immediate()
	prm := &c.params
	if len(p.Data) > 0 {
		if !h.Write() || !prm.ImmediateData || uint32(len(p.Data)) > prm.FirstBurstLength ||
			uint32(len(p.Data)) > edtl {
			return c.protocolError(h, RejectProtocolError, "bad immediate data")
		}
	}
	if h.Write() && !h.Final() && prm.InitialR2T {
		return c.protocolError(h, RejectProtocolError, "unsolicited data with InitialR2T=Yes")
	}
	ext, err := p.ExtendedCDB()
	if err != nil {
		return c.protocolError(h, RejectInvalidPDUField, "bad AHS")
	}

	// The reader may run the command itself (no goroutine handoff) when
	// it is the only one the initiator has sent: see inlineTaskLocked.
	inline := c.inlineSkip == 0 && c.r.Buffered() == 0
	if c.inlineSkip > 0 {
		c.inlineSkip--
	}

	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return errConnClosed
	}
	if _, dup := s.mu.tasks[itt]; dup {
		s.mu.Unlock()
		c.reject(h, RejectTaskInProgress, false)
		return nil
	}
	if len(s.mu.tasks) > 0 {
		// The initiator pipelines: commands run concurrently on
		// workers, for a while.
		inline = false
		c.inlineSkip = inlineBackoff
	}
	verdict := snNow
	if imm {
		if s.mu.immediate >= maxImmediate {
			s.mu.Unlock()
			c.reject(h, RejectImmediateCmdReject, false)
			return nil
		}
		s.mu.immediate++
	} else {
		verdict = s.mu.win.check(h.CmdSN())
		if verdict == snDrop {
			s.mu.Unlock()
			c.log.Debug("iscsi: SCSI command outside CmdSN window dropped", "cmdsn", h.CmdSN(), "itt", itt)
			return nil
		}
	}
	t := s.srv.pools.newTask()
	s.mu.seq++
	t.s, t.c, t.seq = s, c, s.mu.seq
	t.itt, t.cmdSN, t.immediate = itt, h.CmdSN(), imm
	t.read, t.write, t.edtl = h.Read(), h.Write(), edtl
	copy(t.cdb[:], h.CDB())
	cdb := t.cdb[:]
	if len(ext) > 0 {
		t.ext = append(append(make([]byte, 0, 16+len(ext)), t.cdb[:]...), ext...)
		cdb = t.ext
	}
	t.sc = scsi.Task{
		Nexus: s.nexus,
		LUN:   decodeLUN(h.LUN()),
		Tag:   uint64(itt),
		Attr:  taskAttr(h.Attr()),
		CDB:   cdb,
	}
	if t.read {
		t.sc.ExpectedDataIn = int(edtl)
	}
	s.mu.tasks[itt] = t
	early := t.setupDataLocked(h, p.Data)
	var list []held
	switch verdict {
	case snNow:
		if imm {
			s.mu.inline = inline
			s.deliverTaskLocked(t)
		} else {
			list = s.advanceLocked(nil)
			// The task itself is delivered first, then the held ones it
			// unblocked (advanceLocked delivered held SCSI tasks already;
			// order among running SIMPLE tasks is not observable).
			s.mu.inline = inline && len(list) == 0
			s.deliverTaskLocked(t)
		}
	case snHold:
		s.mu.win.hold(t.cmdSN, held{t: t, c: c})
	}
	s.mu.inline = false
	run := s.mu.inlineTask
	s.mu.inlineTask = nil
	if early != nil && !t.started {
		// Oversized or otherwise refused before data: answer now.
		s.finishEarlyLocked(t, early)
	}
	s.mu.Unlock()
	if early != nil {
		c.push()
	}
	s.runHeld(list)
	if run != nil && !c.runInline(ctx, run) {
		return errNotReader
	}
	return nil
}

// inlineBackoff is how many commands the reader hands to workers after an
// inline command was rescued (ran longer than inlineRescue: a device that
// is slow for every command, such as the pool's group commit or a disk,
// would otherwise cost a rescue per command), or after a command arrived
// while others were in flight (the initiator pipelines: running its
// commands concurrently on workers beats running them one by one on the
// reader).
const inlineBackoff = 64

// runInline runs a task on the reader goroutine (see inlineTaskLocked)
// with the connection's context, which ends when the connection or its
// session does, and sends its response from here unless the socket is
// backed up. It reports false when another goroutine took over reading
// meanwhile (rescue): the caller must then stop reading.
func (c *conn) runInline(ctx context.Context, t *task) bool {
	c.srv.stats.inline.Add(1)
	s := t.s
	v := c.beginInline()
	t.run(ctx)
	s.wg.Done()
	return c.endInline(v)
}

// setupDataLocked prepares the write buffer, stores immediate data and
// sends the first R2Ts. It returns a sense error when the command must be
// refused without its data.
// REQUIRES: s.mu held.
func (t *task) setupDataLocked(h BHS, imm []byte) *sense.Error {
	if !t.write || t.edtl == 0 {
		return nil
	}
	if t.read {
		// Bidirectional commands are not supported.
		return sense.InvalidCDBField(0, -1)
	}
	if t.edtl > maxTaskBuffer {
		return sense.InvalidCDBField(0, -1)
	}
	prm := &t.c.params
	t.collect = true
	t.bufp = t.s.srv.pools.get(int(min(t.edtl, initialTaskBuffer)))
	t.buf = (*t.bufp)[:0]
	t.store(0, imm)
	n := uint32(len(imm))
	t.received = n
	t.unsolNext = n
	if !h.Final() {
		t.unsolLimit = min(prm.FirstBurstLength, t.edtl)
		// NB: an initiator that already sent the whole first burst as
		// immediate data has nothing left to send unsolicited.
		t.unsolOpen = n < t.unsolLimit
	}
	t.r2tNext = n
	t.solicitLocked()
	return nil
}

// store copies data to offset off of the write buffer, growing it (by
// doubling, up to edtl) when needed. Callers have checked off+len ≤ edtl.
func (t *task) store(off uint32, data []byte) {
	end := int(off) + len(data)
	if end > cap(t.buf) {
		nbp := t.s.srv.pools.get(min(int(t.edtl), max(end, 2*cap(t.buf))))
		copy(*nbp, t.buf)
		t.s.srv.pools.put(t.bufp)
		t.bufp = nbp
		t.buf = (*nbp)[:len(t.buf)]
	}
	if end > len(t.buf) {
		t.buf = t.buf[:end]
	}
	copy(t.buf[off:], data)
}

// solicitLocked sends R2Ts for data not yet requested, up to
// MaxOutstandingR2T, each at most MaxBurstLength (RFC 7143 §11.8).
// REQUIRES: s.mu held.
func (t *task) solicitLocked() {
	if t.unsolOpen || t.aborted {
		return
	}
	prm := &t.c.params
	maxOut := int(max(1, prm.MaxOutstandingR2T))
	burst := max(512, prm.MaxBurstLength)
	for len(t.r2ts) < maxOut && t.r2tNext < t.edtl {
		n := min(burst, t.edtl-t.r2tNext)
		r := r2tState{ttt: t.s.nextTTT(), offset: t.r2tNext, length: n}
		t.r2ts = append(t.r2ts, r)
		o := outPDU{stat: statCurrent}
		(&R2T{LUN: rawLUN(t), ITT: t.itt, TTT: r.ttt, R2TSN: t.r2tSN, BufferOffset: r.offset,
			DesiredDataTransferLength: n}).AppendTo(o.hdr[:0])
		t.r2tSN++
		t.r2tNext += n
		t.c.queue(&o)
	}
}

// rawLUN re-encodes the task's LUN for PDUs that carry it.
func rawLUN(t *task) uint64 {
	l := t.sc.LUN
	if l < 256 {
		return l << 48
	}
	if l < 1<<14 {
		return (0x40<<8 | l) << 48
	}
	return l
}

// dataOut handles a SCSI Data-Out PDU (RFC 7143 §11.7).
func (s *session) dataOut(ctx context.Context, c *conn, p *PDU) error {
	inline := c.inlineSkip == 0 && c.r.Buffered() == 0
	s.mu.Lock()
	failed := s.dataOutLocked(c, p, inline)
	run := s.mu.inlineTask
	s.mu.inlineTask = nil
	s.mu.Unlock()
	if failed {
		c.push()
	}
	if run != nil && !c.runInline(ctx, run) {
		return errNotReader
	}
	return nil
}

// dataOutLocked is dataOut under s.mu; it reports whether the task failed
// (its response is queued and needs a push).
// REQUIRES: s.mu held.
func (s *session) dataOutLocked(c *conn, p *PDU, inline bool) (failed bool) {
	h := p.BHS
	t := s.mu.tasks[h.ITT()]
	if t == nil || t.aborted || !t.collect || t.c != c {
		// Data for a finished, aborted or refused task: discard.
		c.log.Debug("iscsi: Data-Out for unknown task discarded", "itt", h.ITT())
		return false
	}
	n := uint32(len(p.Data))
	off := h.BufferOffset()
	sn := h.DataSN()
	if t.started {
		return false
	}
	if uint64(off)+uint64(n) > uint64(t.edtl) {
		s.dataErrorLocked(t, "Data-Out beyond expected data transfer length")
		return true
	}
	if h.TTT() == reservedTag {
		if !t.unsolOpen || sn != t.unsolDataSN || off != t.unsolNext || off+n > t.unsolLimit {
			s.dataErrorLocked(t, "unsolicited Data-Out out of order or beyond FirstBurstLength")
			return true
		}
		t.store(off, p.Data)
		t.unsolDataSN++
		t.unsolNext += n
		t.received += n
		if h.Final() {
			t.unsolOpen = false
			t.r2tNext = t.unsolNext
			t.solicitLocked()
		}
	} else {
		i := -1
		for j := range t.r2ts {
			if t.r2ts[j].ttt == h.TTT() {
				i = j
				break
			}
		}
		if i < 0 {
			s.dataErrorLocked(t, "Data-Out with unknown TTT")
			return true
		}
		r := &t.r2ts[i]
		if sn != r.dataSN || off != r.offset+r.got || r.got+n > r.length {
			s.dataErrorLocked(t, "Data-Out DataSN or offset out of order")
			return true
		}
		t.store(off, p.Data)
		r.dataSN++
		r.got += n
		t.received += n
		if h.Final() {
			if r.got != r.length {
				s.dataErrorLocked(t, "Data-Out sequence shorter than the R2T")
				return true
			}
			t.r2ts = append(t.r2ts[:i], t.r2ts[i+1:]...)
			t.solicitLocked()
		}
	}
	s.mu.inline = inline
	s.maybeStartLocked(t)
	s.mu.inline = false
	return false
}

// maybeStartLocked starts the task when it is in order and its data is in.
// REQUIRES: s.mu held.
func (s *session) maybeStartLocked(t *task) {
	if t.started || t.aborted || !t.delivered {
		return
	}
	if t.write && t.edtl > 0 {
		if !t.collect {
			return // refused early; answered by finishEarlyLocked
		}
		if t.unsolOpen || len(t.r2ts) > 0 || t.received != t.edtl || len(t.buf) != int(t.edtl) {
			return
		}
		t.sc.DataOut = t.buf
	}
	t.started = true
	t.running = true
	s.mu.running++
	if s.inlineTaskLocked(t) {
		return
	}
	s.startTask(t)
}

// inlineTaskLocked decides whether the reader runs t itself after it
// releases s.mu, instead of handing it to a worker: at queue depth 1 that
// saves two goroutine wakeups per command. It does when the reader asked
// for it (s.mu.inline: no further PDU already read, the last inline
// command was fast, no held PDU became deliverable) and t is the only task
// of the session, so that nothing else waits behind it; a task
// management request on this connection is read once t is done, one on
// another connection aborts it through the device as usual.
// REQUIRES: s.mu held.
func (s *session) inlineTaskLocked(t *task) bool {
	if !s.mu.inline || s.mu.inlineTask != nil || len(s.mu.tasks) != 1 || s.mu.running != 1 {
		return false
	}
	s.mu.inlineTask = t
	s.wg.Add(1) // like a worker: teardown waits for it
	return true
}

// workerIdle is how long an idle task worker waits for work before exiting.
const workerIdle = 5 * time.Second

// startTask hands t to an idle worker of the session, or starts a new one.
// Workers are bounded by the tasks that may run at once (the CmdSN window
// plus immediate commands), and reusing them keeps their grown stacks.
func (s *session) startTask(t *task) {
	select {
	case s.work <- t:
	default:
		s.wg.Add(1)
		go s.worker(t)
	}
}

// worker runs tasks until it has been idle for workerIdle or the session
// ends.
func (s *session) worker(t *task) {
	defer s.wg.Done()
	var timer *time.Timer
	for {
		t.run(s.ctx)
		if timer == nil {
			timer = time.NewTimer(workerIdle)
			defer timer.Stop()
		} else {
			timer.Reset(workerIdle)
		}
		select {
		case t = <-s.work:
		case <-timer.C:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// ascDataPhaseError is DATA PHASE ERROR (SPC-4 Annex F).
const ascDataPhaseError sense.ASC = 0x4b00

// dataErrorLocked ends a task whose Data-Out broke the sequence rules
// (DataSN, offsets, lengths; RFC 7143 §7.4) with CHECK CONDITION, ABORTED
// COMMAND, DATA PHASE ERROR. At ErrorRecoveryLevel 0 there is no
// within-command recovery; the connection stays up and later Data-Out for
// the task is discarded.
// REQUIRES: s.mu held.
func (s *session) dataErrorLocked(t *task, why string) {
	t.c.log.Info("iscsi: Data-Out sequence error, failing task", "itt", t.itt, "why", why)
	s.finishEarlyLocked(t, sense.New(sense.KeyAbortedCommand, ascDataPhaseError))
}

// finishEarlyLocked answers a task refused before its data arrived.
// REQUIRES: s.mu held.
func (s *session) finishEarlyLocked(t *task, e *sense.Error) {
	t.started = true
	s.mu.win.forget(t.cmdSN, t)
	res := scsi.Result{Status: sense.StatusCheckCondition, Sense: fixedSense(t.senseBuf[2:2], e)}
	s.completeLocked(t, res)
}

// fixedSense builds minimal fixed-format sense data (SPC-4 §4.5.3) for
// transport-level refusals.
func fixedSense(b []byte, e *sense.Error) []byte {
	b = append(b, 0x70, 0, byte(e.Key), 0, 0, 0, 0, 10, 0, 0, 0, 0, e.ASC.Code(), e.ASC.Qualifier(), 0, 0, 0, 0)
	if e.Field != nil {
		b[15] = 0x80
		if e.Field.CDB {
			b[15] |= 0x40
		}
		if e.Field.Bit >= 0 {
			b[15] |= 0x08 | byte(e.Field.Bit&7)
		}
		binary.BigEndian.PutUint16(b[16:], e.Field.Byte)
	}
	return b
}

// run executes the task on the device under ctx and sends the response:
// from this goroutine when no other task of the session runs (push), else
// through the writer goroutine, which batches the responses of
// concurrent tasks into one writev.
func (t *task) run(ctx context.Context) {
	s, c := t.s, t.c
	res := s.dev.Execute(ctx, &t.sc)
	s.mu.Lock()
	s.completeLocked(t, res)
	idle := s.mu.running == 0
	s.mu.Unlock()
	if idle {
		c.push()
	} else {
		c.kick()
	}
}

// completeLocked removes the task from the session, frees its window slot
// and queues Data-In and the status (RFC 7143 §11.4, §11.7).
// REQUIRES: s.mu held.
func (s *session) completeLocked(t *task, res scsi.Result) {
	if s.mu.tasks[t.itt] == t {
		delete(s.mu.tasks, t.itt)
	}
	if t.counted {
		s.mu.win.end()
		t.counted = false
	}
	if t.immediate {
		s.mu.immediate--
	}
	if t.running {
		t.running = false
		s.mu.running--
	}
	s.mu.cond.Broadcast()
	t.release = res.Release
	if res.Aborted || t.aborted || s.mu.closed {
		t.unref()
		return
	}
	t.respond(res)
}

// respond queues the Data-In PDUs and SCSI Response of a finished task,
// without waking the writer: the caller pushes or kicks once it has
// released s.mu. The last queued PDU releases the task.
func (t *task) respond(res scsi.Result) {
	c := t.c
	data := res.Data
	var over, under bool
	var resid uint32
	switch {
	case t.read:
		n := uint32(len(data))
		if uint64(len(data)) > uint64(t.edtl) {
			over, resid = true, uint32(min(uint64(len(data))-uint64(t.edtl), 0xffffffff))
			data = data[:t.edtl]
		} else if n < t.edtl {
			under, resid = true, t.edtl-n
		}
	case t.write:
		data = nil
		if want, ok := t.dataOutLength(); ok {
			if want > int(t.edtl) {
				over, resid = true, uint32(want-int(t.edtl))
			} else if want < int(t.edtl) {
				under, resid = true, t.edtl-uint32(want)
			}
		}
	default:
		if len(data) > 0 {
			over, resid = true, uint32(min(len(data), 0xffffffff))
		}
		data = nil
	}
	collapse := len(data) > 0 && len(res.Sense) == 0 &&
		(res.Status == sense.StatusGood || res.Status == sense.StatusConditionMet)
	maxSeg := uint32(c.maxSendData)
	burst := max(512, c.params.MaxBurstLength)
	var dataSN uint32
	lun := rawLUN(t)
	for off := uint32(0); off < uint32(len(data)); {
		inBurst := burst - off%burst
		n := min(maxSeg, uint32(len(data))-off, inBurst)
		last := off+n == uint32(len(data))
		o := outPDU{data: data[off : off+n]}
		d := DataIn{
			Final: last || n == inBurst, LUN: lun, ITT: t.itt, TTT: reservedTag,
			DataSN: dataSN, BufferOffset: off, DataLen: int(n),
		}
		if last && collapse {
			d.Final, d.HasStatus, d.Status = true, true, res.Status
			d.Overflow, d.Underflow, d.ResidualCount = over, under, resid
			o.stat = statAdvance
			o.release = t
		}
		d.AppendTo(o.hdr[:0])
		c.enqueue(&o)
		dataSN++
		off += n
	}
	if collapse {
		return
	}
	o := outPDU{stat: statAdvance, release: t}
	if len(res.Sense) > 0 {
		o.data = AppendSenseData(t.senseBuf[:0], res.Sense[:min(len(res.Sense), len(t.senseBuf)-2)])
	}
	expDataSN := dataSN
	if t.write {
		expDataSN = t.r2tSN
	}
	(&SCSIResponse{
		Overflow: over, Underflow: under, ResidualCount: resid,
		Status: res.Status, ITT: t.itt, ExpDataSN: expDataSN, DataLen: len(o.data),
	}).AppendTo(o.hdr[:0])
	c.enqueue(&o)
}

// dataOutLength returns the Data-Out length the CDB implies.
func (t *task) dataOutLength() (int, bool) {
	if l, ok := t.s.dev.(DataOutLengther); ok {
		return l.DataOutLength(t.sc.LUN, t.sc.CDB)
	}
	cdb := t.sc.CDB
	const bs = 512
	switch cdb[0] {
	case 0x0a: // WRITE(6)
		n := int(cdb[4])
		if n == 0 {
			n = 256
		}
		return n * bs, true
	case 0x2a, 0x2e: // WRITE(10), WRITE AND VERIFY(10)
		return int(binary.BigEndian.Uint16(cdb[7:])) * bs, true
	case 0xaa, 0xae: // WRITE(12), WRITE AND VERIFY(12)
		return int(binary.BigEndian.Uint32(cdb[6:])) * bs, true
	case 0x8a, 0x8e: // WRITE(16), WRITE AND VERIFY(16)
		return int(binary.BigEndian.Uint32(cdb[10:])) * bs, true
	}
	return 0, false
}
