package replication

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame header layout (see the package doc).
const (
	offMagic   = 0
	offVersion = 4
	offType    = 5
	offFlags   = 6
	offLength  = 8
	offID      = 12
	offCRC     = 20
	// HeaderSize is the size of a frame header.
	HeaderSize = 24
	// ProtocolVersion is the wire version this package speaks.
	ProtocolVersion = 1
	// MaxPayload is the largest payload a frame may carry: a 4 MiB write
	// plus its fields, or a RegionData of a 4 MiB region.
	MaxPayload = 4<<20 + 64<<10
	// DigestSize is the size of one region digest.
	DigestSize = 32
)

// magic opens every frame.
const magic = "SRPL"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors of the wire codec.
var (
	// ErrProtocol reports a malformed frame or message; the connection is
	// dropped.
	ErrProtocol = errors.New("replication: protocol error")
)

// MsgType is the type of a frame.
type MsgType uint8

// Message types.
const (
	TypeHello      MsgType = 1
	TypeWrite      MsgType = 2
	TypeUnmap      MsgType = 3
	TypeFlush      MsgType = 4
	TypeAck        MsgType = 5
	TypeDigestReq  MsgType = 6
	TypeDigests    MsgType = 7
	TypeRegionData MsgType = 8
)

// String returns the type's name.
func (t MsgType) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeWrite:
		return "Write"
	case TypeUnmap:
		return "Unmap"
	case TypeFlush:
		return "Flush"
	case TypeAck:
		return "Ack"
	case TypeDigestReq:
		return "DigestReq"
	case TypeDigests:
		return "Digests"
	case TypeRegionData:
		return "RegionData"
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Status is the outcome carried by an Ack.
type Status uint8

// Ack statuses.
const (
	// StatusOK: the request is durable.
	StatusOK Status = 0
	// StatusStaleEpoch: the request's epoch is lower than the replica's
	// highest; the sender is no longer the owner.
	StatusStaleEpoch Status = 1
	// StatusInvalid: the request is malformed or out of range.
	StatusInvalid Status = 2
	// StatusIOError: the replica's store failed.
	StatusIOError Status = 3
	// StatusUnknownVolume: the replica has no such volume.
	StatusUnknownVolume Status = 4
)

// String returns the status's name.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusStaleEpoch:
		return "stale epoch"
	case StatusInvalid:
		return "invalid"
	case StatusIOError:
		return "I/O error"
	case StatusUnknownVolume:
		return "unknown volume"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Header is a view of a 24-byte frame header.
type Header []byte

// Type returns the message type.
func (h Header) Type() MsgType { return MsgType(h[offType]) }

// Length returns the payload length.
func (h Header) Length() uint32 { return binary.BigEndian.Uint32(h[offLength:]) }

// ID returns the request ID.
func (h Header) ID() uint64 { return binary.BigEndian.Uint64(h[offID:]) }

// CRC returns the frame checksum.
func (h Header) CRC() uint32 { return binary.BigEndian.Uint32(h[offCRC:]) }

// check validates magic, version, flags and length (not the CRC).
func (h Header) check(maxPayload int) error {
	if string(h[offMagic:offMagic+4]) != magic {
		return fmt.Errorf("%w: bad magic %q", ErrProtocol, h[offMagic:offMagic+4])
	}
	if h[offVersion] != ProtocolVersion {
		return fmt.Errorf("%w: version %d", ErrProtocol, h[offVersion])
	}
	if f := binary.BigEndian.Uint16(h[offFlags:]); f != 0 {
		return fmt.Errorf("%w: flags %#x", ErrProtocol, f)
	}
	if n := h.Length(); n > uint32(maxPayload) {
		return fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrProtocol, n, maxPayload)
	}
	return nil
}

// Frame is one decoded frame. Payload aliases the reader's buffer and is
// valid until the next ReadFrame with the same buffer.
type Frame struct {
	Type    MsgType
	ID      uint64
	Payload []byte
}

// Message is a typed frame payload.
type Message interface {
	// Type returns the message's frame type.
	Type() MsgType
	// AppendPayload appends the encoded payload to b.
	AppendPayload(b []byte) []byte
}

// AppendFrame appends a whole frame (header, payload, CRC) carrying m with
// request ID id to b.
func AppendFrame(b []byte, id uint64, m Message) []byte {
	start := len(b)
	b = append(b, magic...)
	b = append(b, ProtocolVersion, byte(m.Type()), 0, 0)
	b = append(b, 0, 0, 0, 0) // length
	b = binary.BigEndian.AppendUint64(b, id)
	b = append(b, 0, 0, 0, 0) // CRC
	b = m.AppendPayload(b)
	h := Header(b[start : start+HeaderSize])
	binary.BigEndian.PutUint32(h[offLength:], uint32(len(b)-start-HeaderSize))
	c := crc32.Update(0, castagnoli, h[:offCRC])
	c = crc32.Update(c, castagnoli, b[start+HeaderSize:])
	binary.BigEndian.PutUint32(h[offCRC:], c)
	return b
}

// ParseFrame decodes the frame at the start of b and returns it with the
// number of bytes it used. It returns io.ErrUnexpectedEOF when b holds
// only part of a frame and an error wrapping ErrProtocol for a bad frame.
// Payload aliases b.
func ParseFrame(b []byte, maxPayload int) (Frame, int, error) {
	if len(b) < HeaderSize {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	h := Header(b[:HeaderSize])
	if err := h.check(maxPayload); err != nil {
		return Frame{}, 0, err
	}
	n := HeaderSize + int(h.Length())
	if len(b) < n {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	p := b[HeaderSize:n]
	c := crc32.Update(0, castagnoli, h[:offCRC])
	if crc32.Update(c, castagnoli, p) != h.CRC() {
		return Frame{}, 0, fmt.Errorf("%w: CRC mismatch in %v frame", ErrProtocol, h.Type())
	}
	return Frame{Type: h.Type(), ID: h.ID(), Payload: p}, n, nil
}

// ReadFrame reads one frame from r into buf (grown as needed) and returns
// it with the buffer to pass to the next call. The payload aliases the
// buffer. Lengths are checked against maxPayload before anything is
// allocated.
func ReadFrame(r *bufio.Reader, buf []byte, maxPayload int) (Frame, []byte, error) {
	if cap(buf) < HeaderSize {
		buf = make([]byte, HeaderSize, 64<<10)
	}
	buf = buf[:HeaderSize]
	if _, err := io.ReadFull(r, buf); err != nil {
		return Frame{}, buf, err
	}
	h := Header(buf)
	if err := h.check(maxPayload); err != nil {
		return Frame{}, buf, err
	}
	n := HeaderSize + int(h.Length())
	if cap(buf) < n {
		nb := make([]byte, n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf[HeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, buf, err
	}
	f, _, err := ParseFrame(buf, maxPayload)
	return f, buf, err
}

// Hello opens a connection: the owner of Volume (Size bytes) in Epoch.
type Hello struct {
	Epoch  uint64
	Size   uint64
	Volume string
	Node   string
}

// Write writes Data at LBA (512-byte sectors) with Version.
type Write struct {
	Version uint64
	LBA     uint64
	// Data aliases the frame buffer when decoded.
	Data []byte
}

// Unmap deallocates Sectors sectors at LBA with Version.
type Unmap struct {
	Version uint64
	LBA     uint64
	Sectors uint64
}

// Flush asks the replica to make everything before it durable.
type Flush struct{ Epoch uint64 }

// Ack answers one request.
type Ack struct {
	Status Status
	// Epoch is the highest epoch the replica has persisted.
	Epoch  uint64
	Reason string
}

// DigestReq asks for the digests of Count regions from First.
type DigestReq struct {
	Epoch      uint64
	RegionSize uint32
	First      uint64
	Count      uint32
}

// Digests answers DigestReq.
type Digests struct {
	First uint64
	// Digests holds Count × DigestSize bytes; it aliases the frame buffer
	// when decoded.
	Digests []byte
}

// Count returns the number of digests.
func (d Digests) Count() int { return len(d.Digests) / DigestSize }

// Digest returns digest i.
func (d Digests) Digest(i int) []byte { return d.Digests[i*DigestSize : (i+1)*DigestSize] }

// RegionData sets one region to the owner's content: the version of each
// block (0: unmapped) and the data of each mapped block, in order.
type RegionData struct {
	Epoch      uint64
	RegionSize uint32
	Region     uint64
	Versions   []uint64
	// Data holds BlockSize bytes per mapped block; it aliases the frame
	// buffer when decoded.
	Data []byte
}

// Type implements Message.
func (Hello) Type() MsgType { return TypeHello }

// Type implements Message.
func (Write) Type() MsgType { return TypeWrite }

// Type implements Message.
func (Unmap) Type() MsgType { return TypeUnmap }

// Type implements Message.
func (Flush) Type() MsgType { return TypeFlush }

// Type implements Message.
func (Ack) Type() MsgType { return TypeAck }

// Type implements Message.
func (DigestReq) Type() MsgType { return TypeDigestReq }

// Type implements Message.
func (Digests) Type() MsgType { return TypeDigests }

// Type implements Message.
func (RegionData) Type() MsgType { return TypeRegionData }

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// AppendPayload implements Message.
func (m Hello) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	b = binary.BigEndian.AppendUint64(b, m.Size)
	b = appendString(b, m.Volume)
	return appendString(b, m.Node)
}

// AppendPayload implements Message.
func (m Write) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Version)
	b = binary.BigEndian.AppendUint64(b, m.LBA)
	return append(b, m.Data...)
}

// AppendPayload implements Message.
func (m Unmap) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Version)
	b = binary.BigEndian.AppendUint64(b, m.LBA)
	return binary.BigEndian.AppendUint64(b, m.Sectors)
}

// AppendPayload implements Message.
func (m Flush) AppendPayload(b []byte) []byte { return binary.BigEndian.AppendUint64(b, m.Epoch) }

// AppendPayload implements Message.
func (m Ack) AppendPayload(b []byte) []byte {
	b = append(b, byte(m.Status))
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	return appendString(b, m.Reason)
}

// AppendPayload implements Message.
func (m DigestReq) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	b = binary.BigEndian.AppendUint32(b, m.RegionSize)
	b = binary.BigEndian.AppendUint64(b, m.First)
	return binary.BigEndian.AppendUint32(b, m.Count)
}

// AppendPayload implements Message.
func (m Digests) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.First)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Count()))
	return append(b, m.Digests...)
}

// AppendPayload implements Message.
func (m RegionData) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	b = binary.BigEndian.AppendUint32(b, m.RegionSize)
	b = binary.BigEndian.AppendUint64(b, m.Region)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Versions)))
	for _, v := range m.Versions {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return append(b, m.Data...)
}

// reader decodes fixed fields, remembering the first short read.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || len(r.b) < n {
		r.bad = true
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (r *reader) str() string { return string(r.take(int(r.u16()))) }

// done reports a short payload or trailing bytes.
func (r *reader) done(t MsgType) error {
	if r.bad {
		return fmt.Errorf("%w: short %v payload", ErrProtocol, t)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes in %v payload", ErrProtocol, len(r.b), t)
	}
	return nil
}

// ParseHello decodes a Hello payload.
func ParseHello(p []byte) (Hello, error) {
	r := reader{b: p}
	m := Hello{Epoch: r.u64(), Size: r.u64(), Volume: r.str(), Node: r.str()}
	return m, r.done(TypeHello)
}

// ParseWrite decodes a Write payload; Data aliases p. It does not allocate.
func ParseWrite(p []byte) (Write, error) {
	r := reader{b: p}
	m := Write{Version: r.u64(), LBA: r.u64()}
	if r.bad {
		return m, r.done(TypeWrite)
	}
	m.Data = r.b
	if len(m.Data) == 0 || len(m.Data)%SectorSize != 0 {
		return m, fmt.Errorf("%w: write of %d bytes", ErrProtocol, len(m.Data))
	}
	return m, nil
}

// ParseUnmap decodes an Unmap payload.
func ParseUnmap(p []byte) (Unmap, error) {
	r := reader{b: p}
	m := Unmap{Version: r.u64(), LBA: r.u64(), Sectors: r.u64()}
	return m, r.done(TypeUnmap)
}

// ParseFlush decodes a Flush payload.
func ParseFlush(p []byte) (Flush, error) {
	r := reader{b: p}
	m := Flush{Epoch: r.u64()}
	return m, r.done(TypeFlush)
}

// ParseAck decodes an Ack payload.
func ParseAck(p []byte) (Ack, error) {
	r := reader{b: p}
	m := Ack{Status: Status(r.u8()), Epoch: r.u64(), Reason: r.str()}
	return m, r.done(TypeAck)
}

// ParseDigestReq decodes a DigestReq payload.
func ParseDigestReq(p []byte) (DigestReq, error) {
	r := reader{b: p}
	m := DigestReq{Epoch: r.u64(), RegionSize: r.u32(), First: r.u64(), Count: r.u32()}
	return m, r.done(TypeDigestReq)
}

// ParseDigests decodes a Digests payload; Digests aliases p.
func ParseDigests(p []byte) (Digests, error) {
	r := reader{b: p}
	m := Digests{First: r.u64()}
	n := r.u32()
	if uint64(n)*DigestSize != uint64(len(r.b)) || r.bad {
		return m, fmt.Errorf("%w: %d digests in %d bytes", ErrProtocol, n, len(r.b))
	}
	m.Digests = r.b
	return m, nil
}

// ParseRegionData decodes a RegionData payload; Data aliases p, Versions
// is allocated.
func ParseRegionData(p []byte) (RegionData, error) {
	r := reader{b: p}
	m := RegionData{Epoch: r.u64(), RegionSize: r.u32(), Region: r.u64()}
	n := r.u32()
	if r.bad || uint64(n)*8 > uint64(len(r.b)) {
		return m, fmt.Errorf("%w: short RegionData payload", ErrProtocol)
	}
	if m.RegionSize == 0 || m.RegionSize%BlockSize != 0 || n == 0 || n > m.RegionSize/BlockSize {
		return m, fmt.Errorf("%w: RegionData of %d blocks for region size %d", ErrProtocol, n, m.RegionSize)
	}
	m.Versions = make([]uint64, n)
	mapped := 0
	for i := range m.Versions {
		m.Versions[i] = r.u64()
		if m.Versions[i] != 0 {
			mapped++
		}
	}
	if len(r.b) != mapped*BlockSize {
		return m, fmt.Errorf("%w: RegionData with %d mapped blocks carries %d bytes", ErrProtocol, mapped, len(r.b))
	}
	m.Data = r.b
	return m, nil
}

// parsers decodes a payload by frame type (STYLE.md §9: dispatch by table).
var parsers = [...]func([]byte) (Message, error){
	TypeHello:      func(p []byte) (Message, error) { return ParseHello(p) },
	TypeWrite:      func(p []byte) (Message, error) { return ParseWrite(p) },
	TypeUnmap:      func(p []byte) (Message, error) { return ParseUnmap(p) },
	TypeFlush:      func(p []byte) (Message, error) { return ParseFlush(p) },
	TypeAck:        func(p []byte) (Message, error) { return ParseAck(p) },
	TypeDigestReq:  func(p []byte) (Message, error) { return ParseDigestReq(p) },
	TypeDigests:    func(p []byte) (Message, error) { return ParseDigests(p) },
	TypeRegionData: func(p []byte) (Message, error) { return ParseRegionData(p) },
}

// Decode decodes a frame's payload into its typed message. Unknown types
// yield an error wrapping ErrProtocol. Slices in the message alias the
// frame's payload.
func Decode(f Frame) (Message, error) {
	if int(f.Type) >= len(parsers) || parsers[f.Type] == nil {
		return nil, fmt.Errorf("%w: unknown message type %d", ErrProtocol, uint8(f.Type))
	}
	return parsers[f.Type](f.Payload)
}
