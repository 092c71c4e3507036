// Package layout is the on-disk format of a Stave pool: superblocks, chunk
// headers and block records. It only encodes and decodes bytes; it does no
// I/O. All integers are little-endian.
//
// A device is cut into a reserved area and segments:
//
//	+-----------------+-----------------+------------+-----------+-----------+-----+
//	| superblock copy | superblock copy | free table | segment 0 | segment 1 | ... |
//	| 0 @ 0           | 1 @ 4 KiB       | @ 8 KiB    | @DataStart|           |     |
//	+-----------------+-----------------+------------+-----------+-----------+-----+
//
// Free table: u64 per segment, the last batch seq when it was freed.
//
// Superblock (SuperblockSize = 4096 bytes, zero padded; copy 1 is a second
// copy with the same or a lower Seq, so a torn superblock write leaves one
// good copy):
//
//	 0  magic "STAVEPSB" [8]      8  format version u32   12  reserved u32
//	16  seq u64                  24  pool UUID [16]       40  device UUID [16]
//	56  device index u32         60  device count u32     64  segment size u64
//	72  segment count u64        80  data start u64       88  epoch u64
//	96  CRC32C of [0,96) u32
//
// Segment s is the byte range [DataStart+s*SegmentSize, +SegmentSize) on
// every member device of the segment. A segment holds batches back to back;
// a batch is one stripe: the same range on k+m member devices, chunk i on
// member i (chunks 0..k-1 data, k..k+m-1 Reed-Solomon parity). Every chunk
// is a header followed by a payload, both the same length in all chunks of
// the batch, so a scan of any single device finds the batch boundaries:
//
//	chunk = [ header: HeaderLen bytes, a multiple of 4 KiB ][ payload: PayloadLen bytes ]
//
// Chunk header (fixed part 64 bytes, then NumRecords records of RecordLen
// bytes, or TaggedRecordLen in a tagged batch, then zero padding to
// HeaderLen):
//
//	 0  magic "SCHK" u32          4  version u16           6  flags u16
//	 8  header CRC32C u32 (of [12, 64+64*NumRecords); in a tagged batch,
//	    of [4, 8) then [12, 64+72*NumRecords): version and flags too)
//	12  payload CRC32C u32 (of this chunk's payload)
//	16  batch seq u64            24  segment u32
//	28  chunk index u8   29 k u8   30 m u8   31 reserved u8
//	32  header len u32           36  payload len u32
//	40  num records u32          44  num blocks u32
//	48  member device indices [16]u8 (k+m used)
//
// Flags: bit 0 is the pool's (a cleaner rewrite); bit 1 is FlagTagged:
// every record of the batch is TaggedRecordLen (72) bytes and ends with a
// tag. The other bits are zero.
//
// Every chunk header carries ALL the records of the batch. Record (64
// bytes; 72 in a tagged batch):
//
//	 0  volume id u64            8  LBA u64 (4 KiB block number)
//	16  version u64 (epoch<<40 | counter)
//	24  kind u16 (1 data, 2 tombstone, 3 meta)   26 reserved u16
//	28  count u32 (tombstone: blocks unmapped from LBA)
//	32  SHA-256 of the 4 KiB block [32] (zero for tombstones)
//	64  tag u64 (tagged batches only: a version chosen by the writer,
//	    e.g. a replication version; the pool orders records by version
//	    and only stores the tag)
//
// Records of kind data and meta each own one 4 KiB block of the batch, in
// record order: block b lives in data chunk b/perChunk at payload offset
// (b%perChunk)*4096, where perChunk = PayloadLen/4096. Unused blocks are
// zero. Parity chunk payloads are the Reed-Solomon parity of the k data
// payloads.
package layout

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Sizes and limits of the format.
const (
	// BlockSize is the pool's block: the unit of records and checksums.
	BlockSize = 4096
	// SuperblockSize is the size of one superblock copy.
	SuperblockSize = 4096
	// SuperblockCopies is the number of superblock copies, at 0 and 4 KiB.
	SuperblockCopies = 2
	// DataStart is where segment 0 begins on every device.
	DataStart = 1 << 20
	// FreeTableStart is where the free table begins: one u64 per segment,
	// the batch seq at which the segment was last freed. Batches of a
	// segment with a seq at or below it are stale (a device that missed
	// the free still holds them). A scan takes the maximum over devices.
	FreeTableStart = SuperblockCopies * SuperblockSize
	// MaxSegments is the most segments per device (the free table size).
	MaxSegments = (DataStart - FreeTableStart) / 8
	// FixedHeaderLen is the fixed part of a chunk header.
	FixedHeaderLen = 64
	// RecordLen is the size of one record of an untagged batch.
	RecordLen = 64
	// TaggedRecordLen is the size of one record of a batch flagged
	// FlagTagged: RecordLen plus the tag.
	TaggedRecordLen = RecordLen + 8
	// MaxMembers is the most chunks a stripe can have (k+m).
	MaxMembers = 16
	// FormatVersion is the current superblock and chunk format version.
	FormatVersion = 1
	// MaxRecords bounds the records of one batch.
	MaxRecords = 4096
)

// FlagTagged is the chunk header flag of a batch whose records carry a
// tag (TaggedRecordLen bytes each). Bit 0 of the flags belongs to the
// pool (it marks the cleaner's batches).
const FlagTagged uint16 = 1 << 1

// RecordLenFor returns the record size of a batch with these flags.
func RecordLenFor(flags uint16) int {
	if flags&FlagTagged != 0 {
		return TaggedRecordLen
	}
	return RecordLen
}

// Magic numbers.
const (
	superMagic = "STAVEPSB"
	chunkMagic = 0x4b484353 // "SCHK" little-endian
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC returns the CRC32C (Castagnoli) of b.
func CRC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Errors returned by decoders.
var (
	// ErrBadMagic means the bytes are not a superblock or chunk header
	// (e.g. zeros or foreign data): the end of a segment's log.
	ErrBadMagic = errors.New("layout: bad magic")
	// ErrChecksum means the magic matched but the CRC did not: a torn or
	// corrupted write.
	ErrChecksum = errors.New("layout: checksum mismatch")
	// ErrShort means the buffer is too short for what it claims to hold.
	ErrShort = errors.New("layout: short buffer")
	// ErrField means a field holds an impossible value.
	ErrField = errors.New("layout: invalid field")
)

// Superblock is the decoded superblock of one device.
type Superblock struct {
	Version      uint32
	Seq          uint64
	PoolID       [16]byte
	DeviceID     [16]byte
	DeviceIndex  uint32
	DeviceCount  uint32
	SegmentSize  uint64
	SegmentCount uint64
	DataStart    uint64
	Epoch        uint64
}

const superCRCOff = 96

// AppendTo appends the SuperblockSize-byte encoding of s to b.
func (s *Superblock) AppendTo(b []byte) []byte {
	start := len(b)
	b = append(b, make([]byte, SuperblockSize)...)
	p := b[start:]
	copy(p[0:8], superMagic)
	binary.LittleEndian.PutUint32(p[8:], s.Version)
	binary.LittleEndian.PutUint64(p[16:], s.Seq)
	copy(p[24:40], s.PoolID[:])
	copy(p[40:56], s.DeviceID[:])
	binary.LittleEndian.PutUint32(p[56:], s.DeviceIndex)
	binary.LittleEndian.PutUint32(p[60:], s.DeviceCount)
	binary.LittleEndian.PutUint64(p[64:], s.SegmentSize)
	binary.LittleEndian.PutUint64(p[72:], s.SegmentCount)
	binary.LittleEndian.PutUint64(p[80:], s.DataStart)
	binary.LittleEndian.PutUint64(p[88:], s.Epoch)
	binary.LittleEndian.PutUint32(p[superCRCOff:], CRC(p[:superCRCOff]))
	return b
}

// DecodeSuperblock parses one superblock copy. It returns ErrBadMagic for
// bytes that are no superblock and ErrChecksum for a damaged one.
func DecodeSuperblock(p []byte) (Superblock, error) {
	var s Superblock
	if len(p) < superCRCOff+4 {
		return s, ErrShort
	}
	if string(p[0:8]) != superMagic {
		return s, ErrBadMagic
	}
	if binary.LittleEndian.Uint32(p[superCRCOff:]) != CRC(p[:superCRCOff]) {
		return s, ErrChecksum
	}
	s.Version = binary.LittleEndian.Uint32(p[8:])
	s.Seq = binary.LittleEndian.Uint64(p[16:])
	copy(s.PoolID[:], p[24:40])
	copy(s.DeviceID[:], p[40:56])
	s.DeviceIndex = binary.LittleEndian.Uint32(p[56:])
	s.DeviceCount = binary.LittleEndian.Uint32(p[60:])
	s.SegmentSize = binary.LittleEndian.Uint64(p[64:])
	s.SegmentCount = binary.LittleEndian.Uint64(p[72:])
	s.DataStart = binary.LittleEndian.Uint64(p[80:])
	s.Epoch = binary.LittleEndian.Uint64(p[88:])
	if s.Version != FormatVersion || s.SegmentSize == 0 || s.SegmentSize%BlockSize != 0 ||
		s.DataStart%BlockSize != 0 || s.DeviceIndex >= MaxMembers*16 {
		return s, ErrField
	}
	return s, nil
}

// RecordKind is the kind of a record.
type RecordKind uint16

// Record kinds.
const (
	// KindData is a 4 KiB data block of a volume.
	KindData RecordKind = 1
	// KindTombstone unmaps Count blocks from LBA (UNMAP); it has no block.
	KindTombstone RecordKind = 2
	// KindMeta carries pool metadata (volumes, snapshots) as a JSON block;
	// its volume id is 0 and its LBA is unused.
	KindMeta RecordKind = 3
)

// String returns the kind's name.
func (k RecordKind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindTombstone:
		return "tombstone"
	case KindMeta:
		return "meta"
	}
	return "kind?"
}

// HasBlock reports whether records of this kind own a 4 KiB block.
func (k RecordKind) HasBlock() bool { return k == KindData || k == KindMeta }

// Record describes one block (or block range for tombstones) of a batch.
type Record struct {
	Volume  uint64
	LBA     uint64
	Version uint64
	Kind    RecordKind
	Count   uint32
	SHA     [32]byte
	// Tag is stored only in batches flagged FlagTagged (elsewhere it is
	// dropped when encoding and decodes as 0).
	Tag uint64
}

// ChunkHeader is the decoded header of one chunk.
type ChunkHeader struct {
	Version    uint16
	Flags      uint16
	PayloadCRC uint32
	Seq        uint64
	Segment    uint32
	Index      uint8 // chunk index in the stripe, 0..K+M-1
	K, M       uint8
	HeaderLen  uint32
	PayloadLen uint32
	NumBlocks  uint32
	Members    [MaxMembers]uint8
	// Records are all records of the batch. When decoding, it reuses the
	// slice passed in.
	Records []Record
}

// HeaderLenFor returns the header length (a multiple of BlockSize) for an
// untagged batch of n records.
func HeaderLenFor(n int) uint32 { return HeaderLen(n, 0) }

// HeaderLen returns the header length (a multiple of BlockSize) for a
// batch of n records with these flags.
func HeaderLen(n int, flags uint16) uint32 {
	l := FixedHeaderLen + n*RecordLenFor(flags)
	return uint32((l + BlockSize - 1) / BlockSize * BlockSize)
}

// PerChunk returns the number of blocks each data chunk holds.
func (h *ChunkHeader) PerChunk() int { return int(h.PayloadLen / BlockSize) }

// ChunkLen returns the total length of each chunk of the batch.
func (h *ChunkHeader) ChunkLen() int64 { return int64(h.HeaderLen) + int64(h.PayloadLen) }

// AppendTo appends the HeaderLen-byte encoding of h to b. HeaderLen must be
// at least HeaderLen(len(h.Records), h.Flags) (a shorter one is raised to
// it); the CRC is computed here. Records' tags are encoded only when
// h.Flags has FlagTagged.
func (h *ChunkHeader) AppendTo(b []byte) []byte {
	start := len(b)
	hl := int(h.HeaderLen)
	if min := int(HeaderLen(len(h.Records), h.Flags)); hl < min {
		hl = min
	}
	rl := RecordLenFor(h.Flags)
	for i := 0; i < hl; i++ {
		b = append(b, 0)
	}
	p := b[start:]
	le := binary.LittleEndian
	le.PutUint32(p[0:], chunkMagic)
	le.PutUint16(p[4:], h.Version)
	le.PutUint16(p[6:], h.Flags)
	le.PutUint32(p[12:], h.PayloadCRC)
	le.PutUint64(p[16:], h.Seq)
	le.PutUint32(p[24:], h.Segment)
	p[28], p[29], p[30] = h.Index, h.K, h.M
	le.PutUint32(p[32:], uint32(hl))
	le.PutUint32(p[36:], h.PayloadLen)
	le.PutUint32(p[40:], uint32(len(h.Records)))
	le.PutUint32(p[44:], h.NumBlocks)
	copy(p[48:64], h.Members[:])
	for i := range h.Records {
		r := &h.Records[i]
		q := p[FixedHeaderLen+i*rl:]
		le.PutUint64(q[0:], r.Volume)
		le.PutUint64(q[8:], r.LBA)
		le.PutUint64(q[16:], r.Version)
		le.PutUint16(q[24:], uint16(r.Kind))
		le.PutUint32(q[28:], r.Count)
		copy(q[32:64], r.SHA[:])
		if rl == TaggedRecordLen {
			le.PutUint64(q[64:], r.Tag)
		}
	}
	used := FixedHeaderLen + len(h.Records)*rl
	le.PutUint32(p[8:], headerCRC(p, used, h.Flags))
	return b
}

// headerCRC returns the header CRC of chunk header p whose records end at
// used. A tagged header's CRC covers its version and flags too, so that a
// flipped flag bit cannot change the record length unnoticed.
func headerCRC(p []byte, used int, flags uint16) uint32 {
	if flags&FlagTagged == 0 {
		return CRC(p[12:used])
	}
	return crc32.Update(CRC(p[4:8]), castagnoli, p[12:used])
}

// PeekHeaderLen returns the header length claimed by the fixed part in p
// (at least FixedHeaderLen bytes), so the caller can read the rest. It
// checks the magic and the plausibility of the lengths, not the CRC.
func PeekHeaderLen(p []byte) (uint32, error) {
	if len(p) < FixedHeaderLen {
		return 0, ErrShort
	}
	if binary.LittleEndian.Uint32(p[0:]) != chunkMagic {
		return 0, ErrBadMagic
	}
	hl := binary.LittleEndian.Uint32(p[32:])
	n := binary.LittleEndian.Uint32(p[40:])
	flags := binary.LittleEndian.Uint16(p[6:])
	if hl%BlockSize != 0 || hl == 0 || n > MaxRecords || hl < HeaderLen(int(n), flags) {
		return 0, ErrField
	}
	return hl, nil
}

// DecodeChunkHeader parses a chunk header from p (which must hold the
// whole header). recs is reused for the records. It never panics on any
// input. ErrBadMagic marks the end of a log; ErrChecksum a torn or
// corrupted header; ErrField an impossible geometry.
func DecodeChunkHeader(p []byte, recs []Record) (ChunkHeader, error) {
	var h ChunkHeader
	hl, err := PeekHeaderLen(p)
	if err != nil {
		return h, err
	}
	le := binary.LittleEndian
	n := int(le.Uint32(p[40:]))
	flags := le.Uint16(p[6:])
	rl := RecordLenFor(flags)
	used := FixedHeaderLen + n*rl
	if len(p) < used || uint32(len(p)) < hl {
		return h, ErrShort
	}
	if le.Uint32(p[8:]) != headerCRC(p, used, flags) {
		return h, ErrChecksum
	}
	h.Version = le.Uint16(p[4:])
	h.Flags = le.Uint16(p[6:])
	h.PayloadCRC = le.Uint32(p[12:])
	h.Seq = le.Uint64(p[16:])
	h.Segment = le.Uint32(p[24:])
	h.Index, h.K, h.M = p[28], p[29], p[30]
	h.HeaderLen = hl
	h.PayloadLen = le.Uint32(p[36:])
	h.NumBlocks = le.Uint32(p[44:])
	copy(h.Members[:], p[48:64])
	if h.Version != FormatVersion || h.K == 0 || int(h.K)+int(h.M) > MaxMembers ||
		h.Index >= h.K+h.M || h.PayloadLen%BlockSize != 0 {
		return h, ErrField
	}
	recs = recs[:0]
	blocks := 0
	for i := 0; i < n; i++ {
		q := p[FixedHeaderLen+i*rl:]
		var r Record
		r.Volume = le.Uint64(q[0:])
		r.LBA = le.Uint64(q[8:])
		r.Version = le.Uint64(q[16:])
		r.Kind = RecordKind(le.Uint16(q[24:]))
		r.Count = le.Uint32(q[28:])
		copy(r.SHA[:], q[32:64])
		if rl == TaggedRecordLen {
			r.Tag = le.Uint64(q[64:])
		}
		switch r.Kind {
		case KindData, KindMeta:
			blocks++
		case KindTombstone:
		default:
			return h, ErrField
		}
		recs = append(recs, r)
	}
	h.Records = recs
	if uint32(blocks) != h.NumBlocks || uint64(blocks) > uint64(h.K)*uint64(h.PayloadLen/BlockSize) {
		return h, ErrField
	}
	return h, nil
}

// Valid reports whether h was decoded (has a geometry).
func (h *ChunkHeader) Valid() bool { return h.K > 0 && h.HeaderLen > 0 }
