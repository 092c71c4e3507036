package pool

import (
	"encoding/binary"
	"fmt"

	"stave.dev/stave/pool/internal/layout"
)

// Index keys in pebble (all integers big-endian so that byte order is
// numeric order):
//
//	'b' vol u64 lba u64 ^version u64  -> location (newest version first)
//	's' row u32                        -> segment state
//	'v' vol u64                        -> volume metadata (JSON)
//	'c'                                -> checkpoint (last batch seq applied, max version, max volume id)
const (
	prefixBlock      = 'b'
	prefixSegment    = 's'
	prefixVolume     = 'v'
	prefixCheckpoint = 'c'
	blockKeyLen      = 25
	// locLen is the length of an untagged location; a tagged one has
	// the tag appended (taggedLocLen). Decoding goes by length, so an
	// index written before tags existed reads as untagged, which is what
	// its blocks are (no tagged batch was ever written by that code).
	locLen       = 60
	taggedLocLen = locLen + 8
)

func blockKey(b []byte, vol, lba, ver uint64) []byte {
	b = append(b, prefixBlock)
	b = binary.BigEndian.AppendUint64(b, vol)
	b = binary.BigEndian.AppendUint64(b, lba)
	return binary.BigEndian.AppendUint64(b, ^ver)
}

// blockPrefix is the key prefix of all versions of (vol, lba).
func blockPrefix(b []byte, vol, lba uint64) []byte {
	b = append(b, prefixBlock)
	b = binary.BigEndian.AppendUint64(b, vol)
	return binary.BigEndian.AppendUint64(b, lba)
}

func parseBlockKey(k []byte) (vol, lba, ver uint64, ok bool) {
	if len(k) != blockKeyLen || k[0] != prefixBlock {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(k[9:]), ^binary.BigEndian.Uint64(k[17:]), true
}

func segKey(row uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixSegment}, row)
}

func volKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixVolume}, id)
}

var checkpointKey = []byte{prefixCheckpoint}

// loc is where one block version lives.
type loc struct {
	row        uint32
	batchOff   int64 // offset of the batch in the segment
	hdrLen     uint32
	payloadLen uint32
	block      uint32 // index of the block in the batch
	k, m       uint8
	sha        [32]byte
	// tag is the record's tag (see Volume.WriteTagged); 0: untagged.
	tag uint64
}

func (l *loc) appendTo(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, l.row)
	b = le.AppendUint64(b, uint64(l.batchOff))
	b = le.AppendUint32(b, l.hdrLen)
	b = le.AppendUint32(b, l.payloadLen)
	b = le.AppendUint32(b, l.block)
	b = append(b, l.k, l.m, 0, 0)
	b = append(b, l.sha[:]...)
	if l.tag != 0 {
		b = le.AppendUint64(b, l.tag)
	}
	return b
}

func decodeLoc(b []byte) (loc, error) {
	var l loc
	if len(b) != locLen && len(b) != taggedLocLen {
		return l, fmt.Errorf("%w: index location of %d bytes", ErrCorruption, len(b))
	}
	le := binary.LittleEndian
	l.row = le.Uint32(b)
	l.batchOff = int64(le.Uint64(b[4:]))
	l.hdrLen = le.Uint32(b[12:])
	l.payloadLen = le.Uint32(b[16:])
	l.block = le.Uint32(b[20:])
	l.k, l.m = b[24], b[25]
	copy(l.sha[:], b[28:60])
	if len(b) == taggedLocLen {
		l.tag = le.Uint64(b[60:])
	}
	if l.payloadLen < layout.BlockSize || l.k == 0 {
		return l, fmt.Errorf("%w: bad index location", ErrCorruption)
	}
	return l, nil
}

// chunk returns the data chunk index and the byte offset of the block
// inside that chunk.
func (l *loc) chunk() (int, int64) {
	per := l.payloadLen / layout.BlockSize
	return int(l.block / per), int64(l.hdrLen) + int64(l.block%per)*layout.BlockSize
}

// segState is the persistent state of one in-use segment.
type segState struct {
	k, m    uint8
	sealed  bool
	gc      bool // the cleaner's output segment
	members [layout.MaxMembers]uint8
	tail    int64  // bytes used
	blocks  int64  // data blocks written
	live    int64  // data blocks still referenced by the index
	parity  int64  // parity bytes (per device, summed)
	minVer  uint64 // lowest data or tombstone version ever written to the segment (0: none)
	// others counts the records other than data (tombstones, meta)
	// written to the segment; -1 when unknown (a state stored before the
	// count was). A segment with neither live blocks nor others holds
	// nothing the cleaner must carry.
	others int64
	// reserved is the end of the space handed out to batches in flight
	// (in memory only; owned by the committer under Pool.mu).
	reserved int64
	// inflight counts batches allocated here and not yet applied or
	// failed (in memory only; guarded by Pool.mu). The cleaner never
	// touches a segment with batches in flight.
	inflight int
}

func (s *segState) width() int { return int(s.k) + int(s.m) }

// appendTo appends the index value of segment s (row r) as the batch
// being applied at row (if any) leaves it. It is recorded sealed only
// once no other batch is in flight there: Open scans only the segments
// the index does not mark sealed, and batches written there but not yet
// applied must be found by that scan.
// REQUIRES: Pool.mu held.
func (s *segState) appendTo(b []byte, r, row uint32) []byte {
	le := binary.LittleEndian
	var sealed uint8
	if s.sealed && (s.inflight == 0 || (s.inflight == 1 && r == row)) {
		sealed = 1
	}
	var gc uint8
	if s.gc {
		gc = 1
	}
	b = append(b, s.k, s.m, sealed, gc)
	b = append(b, s.members[:]...)
	b = le.AppendUint64(b, uint64(s.tail))
	b = le.AppendUint64(b, uint64(s.blocks))
	b = le.AppendUint64(b, uint64(s.live))
	b = le.AppendUint64(b, uint64(s.parity))
	b = le.AppendUint64(b, s.minVer)
	return le.AppendUint64(b, uint64(s.others))
}

// segStateLen is the length of a segment state value; states stored
// before others was counted are 8 bytes shorter (others decodes as -1).
const segStateLen = 4 + layout.MaxMembers + 48

func decodeSegState(b []byte) (segState, error) {
	var s segState
	if len(b) != segStateLen && len(b) != segStateLen-8 {
		return s, fmt.Errorf("%w: segment state of %d bytes", ErrCorruption, len(b))
	}
	le := binary.LittleEndian
	s.k, s.m, s.sealed, s.gc = b[0], b[1], b[2] == 1, b[3] == 1
	copy(s.members[:], b[4:20])
	s.tail = int64(le.Uint64(b[20:]))
	s.blocks = int64(le.Uint64(b[28:]))
	s.live = int64(le.Uint64(b[36:]))
	s.parity = int64(le.Uint64(b[44:]))
	s.minVer = le.Uint64(b[52:])
	s.others = -1
	if len(b) == segStateLen {
		s.others = int64(le.Uint64(b[60:]))
	}
	return s, nil
}

// checkpoint is the replay position stored with every index update.
type checkpoint struct {
	seq, maxVersion, maxVolID uint64
}

func (c checkpoint) appendTo(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, c.seq)
	b = binary.LittleEndian.AppendUint64(b, c.maxVersion)
	return binary.LittleEndian.AppendUint64(b, c.maxVolID)
}

func decodeCheckpoint(b []byte) (checkpoint, error) {
	if len(b) != 24 {
		return checkpoint{}, fmt.Errorf("%w: checkpoint of %d bytes", ErrCorruption, len(b))
	}
	return checkpoint{binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])}, nil
}
