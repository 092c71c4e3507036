package iscsi

// cmdWindow is the CmdSN window of a session (RFC 7143 §4.2.2.1): a pure
// state machine, guarded by its session's mu, that orders non-immediate
// commands and bounds how many run at once.
//
//  1. A command with CmdSN outside [ExpCmdSN, MaxCmdSN], or a duplicate of
//     a held one, is dropped silently.
//  2. CmdSN == ExpCmdSN is delivered now; advance then moves ExpCmdSN past
//     it and past every held command that follows, returning those in
//     order.
//  3. A command ahead of ExpCmdSN inside the window is held until the gap
//     fills.
//  4. MaxCmdSN = ExpCmdSN + depth - 1 - active, where active counts
//     delivered commands still running (begin/end): the window shrinks
//     while they run and MaxCmdSN never decreases.
type cmdWindow struct {
	depth   uint32
	exp     uint32
	active  uint32
	pending map[uint32]held
}

func newCmdWindow(exp, depth uint32) cmdWindow {
	return cmdWindow{depth: depth, exp: exp, pending: make(map[uint32]held)}
}

// bounds returns ExpCmdSN and MaxCmdSN.
func (w *cmdWindow) bounds() (exp, maxSN uint32) {
	return w.exp, w.exp + w.depth - 1 - w.active
}

// snLess is serial number arithmetic a < b (RFC 1982, 32 bits).
func snLess(a, b uint32) bool { return a != b && int32(a-b) < 0 }

// cmdSNVerdict says what to do with a non-immediate command.
type cmdSNVerdict uint8

const (
	snDrop cmdSNVerdict = iota // outside the window or duplicate: ignore
	snNow                      // CmdSN == ExpCmdSN
	snHold                     // ahead of ExpCmdSN, inside the window
)

// String names the verdict.
func (v cmdSNVerdict) String() string {
	switch v {
	case snDrop:
		return "drop"
	case snNow:
		return "now"
	case snHold:
		return "hold"
	}
	return "cmdSNVerdict(" + itoa(int(v)) + ")"
}

// check classifies a non-immediate CmdSN (steps 1-3).
func (w *cmdWindow) check(sn uint32) cmdSNVerdict {
	exp, maxSN := w.bounds()
	switch {
	case snLess(sn, exp) || snLess(maxSN, sn):
		return snDrop // includes a closed window (MaxCmdSN = ExpCmdSN-1)
	case sn == exp:
		return snNow
	}
	if _, dup := w.pending[sn]; dup {
		return snDrop
	}
	return snHold
}

// hold keeps a command that check answered snHold for.
func (w *cmdWindow) hold(sn uint32, h held) { w.pending[sn] = h }

// advance moves ExpCmdSN past the command just delivered and past every
// held command that follows; it appends the held ones (not consumed) to
// out in CmdSN order.
func (w *cmdWindow) advance(out []held) []held {
	w.exp++
	for {
		h, ok := w.pending[w.exp]
		if !ok {
			return out
		}
		delete(w.pending, w.exp)
		w.exp++
		if !h.consumed {
			out = append(out, h)
		}
	}
}

// consume marks sn as received without running anything (RFC 7143
// §11.5.1: ABORT TASK of a command never received); if sn is ExpCmdSN the
// window advances and the held commands that follow are returned.
func (w *cmdWindow) consume(sn uint32, out []held) []held {
	if sn == w.exp {
		return w.advance(out)
	}
	if _, ok := w.pending[sn]; !ok {
		w.pending[sn] = held{consumed: true}
	}
	return out
}

// forget turns a held task that was aborted into a consumed CmdSN.
func (w *cmdWindow) forget(sn uint32, t *task) {
	if h, ok := w.pending[sn]; ok && h.t == t {
		w.pending[sn] = held{consumed: true}
	}
}

// begin counts a delivered command as running; end when it finished.
func (w *cmdWindow) begin() { w.active++ }
func (w *cmdWindow) end()   { w.active-- }

// reset drops every held command (session teardown).
func (w *cmdWindow) reset() { clear(w.pending) }
