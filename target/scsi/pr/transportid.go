package pr

import (
	"bytes"
	"encoding/binary"
	"strings"

	"stave.dev/stave/target/scsi/sense"
)

// protocolISCSI is the PROTOCOL IDENTIFIER of iSCSI (SPC-4 Table 362).
const protocolISCSI = 0x5

// TransportID format codes for iSCSI (SPC-4 §7.6.4.6).
const (
	tidFormatName     = 0x00 // iSCSI name of the initiator device
	tidFormatNameISID = 0x40 // initiator port: name ",i,0x" ISID
)

// isidSeparator separates the iSCSI name from the ISID in an initiator
// port name (RFC 7143 §4.2.7.1).
const isidSeparator = ",i,0x"

// transportID is a decoded iSCSI TransportID.
type transportID struct {
	// name is the iSCSI name.
	name string
	// port is the initiator port name for format 01, empty for format 00.
	port string
}

// parseTransportID decodes one iSCSI TransportID at b[0:], where b starts
// at parameter-list offset off (for field pointers). It returns the
// TransportID and its length in bytes.
func parseTransportID(b []byte, off int) (transportID, int, error) {
	if len(b) < 4 {
		return transportID{}, 0, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
	}
	if b[0]&0x0f != protocolISCSI {
		return transportID{}, 0, sense.InvalidParamField(off, 3)
	}
	format := b[0] & 0xc0
	if format != tidFormatName && format != tidFormatNameISID {
		return transportID{}, 0, sense.InvalidParamField(off, 7)
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	// SPC-4 §7.6.4.6: ADDITIONAL LENGTH is a multiple of four.
	if n%4 != 0 || n == 0 {
		return transportID{}, 0, sense.InvalidParamField(off+2, -1)
	}
	if 4+n > len(b) {
		return transportID{}, 0, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
	}
	s := b[4 : 4+n]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	} else {
		return transportID{}, 0, sense.InvalidParamField(off+4, -1)
	}
	str := string(s)
	var t transportID
	if format == tidFormatName {
		if str == "" || strings.Contains(str, ",") {
			return transportID{}, 0, sense.InvalidParamField(off+4, -1)
		}
		t.name = str
	} else {
		i := strings.Index(strings.ToLower(str), isidSeparator)
		// 12 hex digits of ISID (RFC 7143 §10.12.5).
		if i <= 0 || len(str)-i-len(isidSeparator) != 12 || !isHex(str[i+len(isidSeparator):]) {
			return transportID{}, 0, sense.InvalidParamField(off+4, -1)
		}
		t.name = str[:i]
		t.port = str
	}
	return t, 4 + n, nil
}

// isHex reports whether s is all hexadecimal digits.
func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// appendTransportID appends the iSCSI TransportID of registration r:
// format 01 when it names an initiator port, format 00 otherwise. The name
// is NUL-terminated and padded to a multiple of four, at least 20 bytes
// (SPC-4 §7.6.4.6).
func appendTransportID(b []byte, r *Registration) []byte {
	format := byte(tidFormatNameISID)
	name := r.InitiatorPort
	if name == "" {
		format = tidFormatName
		name = r.InitiatorName
	}
	n := len(name) + 1
	n = (n + 3) &^ 3
	if n < 20 {
		n = 20
	}
	b = append(b, format|protocolISCSI, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, name...)
	for range n - len(name) {
		b = append(b, 0)
	}
	return b
}
