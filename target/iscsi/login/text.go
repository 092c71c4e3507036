package login

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Errors of the text codec and configuration. Errors returned by ParseText
// and the value parsers wrap one of these.
var (
	// ErrMalformedText marks text that is not a sequence of
	// key=value\0 pairs with valid key names.
	ErrMalformedText = errors.New("login: malformed text")
	// ErrDuplicateKey marks a key that appears twice in one text.
	ErrDuplicateKey = errors.New("login: duplicate key")
	// ErrTextTooLong marks text longer than MaxTextLength, a key longer
	// than MaxKeyLength or a value longer than its limit.
	ErrTextTooLong = errors.New("login: text too long")
	// ErrTooManyKeys marks text with more than MaxKeys pairs.
	ErrTooManyKeys = errors.New("login: too many keys")
	// ErrInvalidValue marks a value that does not parse as its type.
	ErrInvalidValue = errors.New("login: invalid value")
	// ErrInvalidLimits marks a Limits field outside its range.
	ErrInvalidLimits = errors.New("login: invalid limits")
)

// Text limits. The runtime should stop reassembling a C-bit sequence once
// it exceeds MaxTextLength.
const (
	// MaxTextLength is the longest login text accepted in one request.
	MaxTextLength = 65536
	// MaxKeys is the most key=value pairs accepted in one request.
	MaxKeys = 256
	// MaxKeyLength is the longest key name (RFC 7143 §6.1).
	MaxKeyLength = 63
	// MaxValueLength is the longest value of an ordinary key
	// (RFC 7143 §6.1).
	MaxValueLength = 255
	// MaxLargeValueLength is the longest encoded value of a key that
	// carries a large binary value (CHAP_C, CHAP_R; RFC 7143 §6.1).
	MaxLargeValueLength = 8192
	// maxBinaryLength is the longest decoded CHAP_C or CHAP_R.
	maxBinaryLength = 1024
)

// ParseText parses iSCSI text (RFC 7143 §6.1): a sequence of
// key=value pairs each terminated by a NUL byte. Trailing NUL bytes (pad)
// are ignored. It checks the total length and pair count before
// allocating, key names (1..63 bytes of letters, digits and . - + @ _,
// starting with a letter, or X# for registered extensions), value
// lengths, and that no key appears twice. Keys and values are copied;
// data is not retained.
//
// Errors wrap ErrTextTooLong, ErrTooManyKeys, ErrMalformedText or
// ErrDuplicateKey.
func ParseText(data []byte) ([]KeyValue, error) {
	if len(data) > MaxTextLength {
		return nil, fmt.Errorf("%w: %d bytes > %d", ErrTextTooLong, len(data), MaxTextLength)
	}
	if len(data) == 0 {
		return nil, nil
	}
	if data[len(data)-1] != 0 {
		return nil, fmt.Errorf("%w: text is not NUL-terminated", ErrMalformedText)
	}
	data = bytes.TrimRight(data, "\x00")
	if len(data) == 0 {
		return nil, nil
	}
	// Every pair, including the last (its NUL was trimmed), ends at a NUL.
	n := bytes.Count(data, []byte{0}) + 1
	if n > MaxKeys {
		return nil, fmt.Errorf("%w: %d > %d", ErrTooManyKeys, n, MaxKeys)
	}
	kvs := make([]KeyValue, 0, n)
	for len(data) > 0 {
		var pair []byte
		if i := bytes.IndexByte(data, 0); i >= 0 {
			pair, data = data[:i], data[i+1:]
		} else {
			pair, data = data, nil
		}
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%w: %q has no '='", ErrMalformedText, truncate(pair))
		}
		key, val := pair[:eq], pair[eq+1:]
		if err := checkKey(key); err != nil {
			return nil, err
		}
		if lim := valueLimit(string(key)); len(val) > lim {
			return nil, fmt.Errorf("%w: value of %s is %d bytes > %d", ErrTextTooLong, key, len(val), lim)
		}
		for _, kv := range kvs {
			if kv.Key == string(key) {
				return nil, fmt.Errorf("%w: %s", ErrDuplicateKey, key)
			}
		}
		kvs = append(kvs, KeyValue{Key: string(key), Value: string(val)})
	}
	return kvs, nil
}

// checkKey validates a key name (RFC 7143 §6.1: key-name).
func checkKey(key []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", ErrMalformedText)
	}
	if len(key) > MaxKeyLength {
		return fmt.Errorf("%w: key %q is %d bytes > %d", ErrTextTooLong, truncate(key), len(key), MaxKeyLength)
	}
	// RFC 7143 §6.1 asks for a capital first letter, but RFC 7144 itself
	// defines iSCSIProtocolLevel, so any letter is accepted.
	if c := key[0]; (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
		return fmt.Errorf("%w: key %q does not start with a letter", ErrMalformedText, truncate(key))
	}
	for i, c := range key[1:] {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '-', c == '+', c == '@', c == '_':
		case c == '#' && i == 0 && key[0] == 'X':
			// X#... registered extension keys (RFC 7143 §13.5.5).
		default:
			return fmt.Errorf("%w: key %q has invalid character %q", ErrMalformedText, truncate(key), c)
		}
	}
	return nil
}

// valueLimit returns the longest encoded value accepted for key.
func valueLimit(key string) int {
	switch key {
	case keyCHAPC, keyCHAPR:
		return MaxLargeValueLength
	}
	return MaxValueLength
}

// truncate shortens b for error messages.
func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// AppendText appends kvs to b as key=value\0 pairs and returns the
// extended slice. It does not validate; the target only encodes keys and
// values it built itself.
func AppendText(b []byte, kvs ...KeyValue) []byte {
	for _, kv := range kvs {
		b = append(b, kv.Key...)
		b = append(b, '=')
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

// SplitText cuts a response's text into parts of at most max bytes, for
// sending over several Login (or Text) Responses with the C bit set on all
// but the last (RFC 7143 §11.13.1). A key=value pair may span parts
// (RFC 7143 §6.1). The parts alias data. A max below 1 yields one part.
func SplitText(data []byte, max int) [][]byte {
	if max < 1 || len(data) <= max {
		return [][]byte{data}
	}
	parts := make([][]byte, 0, (len(data)+max-1)/max)
	for len(data) > max {
		parts = append(parts, data[:max:max])
		data = data[max:]
	}
	return append(parts, data)
}

// ParseNumber parses a numerical value (RFC 7143 §6.1): a decimal
// constant or a hex constant (0x or 0X followed by hex digits), below
// 2^64. Errors wrap ErrInvalidValue.
func ParseNumber(s string) (uint64, error) {
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		h := s[2:]
		for _, c := range []byte(h) {
			if !isHex(c) {
				return 0, fmt.Errorf("%w: %q is not a hex constant", ErrInvalidValue, s)
			}
		}
		v, err := strconv.ParseUint(h, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %q: out of range", ErrInvalidValue, s)
		}
		return v, nil
	}
	if s == "" {
		return 0, fmt.Errorf("%w: empty number", ErrInvalidValue)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: %q is not a decimal constant", ErrInvalidValue, s)
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: out of range", ErrInvalidValue, s)
	}
	return v, nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// ParseBinary parses a binary value (RFC 7143 §6.1): a hex constant
// (0x/0X, an odd digit count has an implied leading zero) or a base64
// constant (0b/0B, RFC 4648 with padding). Errors wrap ErrInvalidValue.
func ParseBinary(s string) ([]byte, error) {
	if len(s) < 3 || s[0] != '0' {
		return nil, fmt.Errorf("%w: %q is not a hex or base64 constant", ErrInvalidValue, truncate([]byte(s)))
	}
	body := s[2:]
	switch s[1] {
	case 'x', 'X':
		if len(body)%2 == 1 {
			body = "0" + body
		}
		b, err := hex.DecodeString(body)
		if err != nil {
			return nil, fmt.Errorf("%w: bad hex constant: %v", ErrInvalidValue, err)
		}
		return b, nil
	case 'b', 'B':
		b, err := base64.StdEncoding.Strict().DecodeString(body)
		if err != nil {
			return nil, fmt.Errorf("%w: bad base64 constant: %v", ErrInvalidValue, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: %q is not a hex or base64 constant", ErrInvalidValue, truncate([]byte(s)))
}

// FormatHex encodes b as a hex constant ("0x" and lower-case digits).
func FormatHex(b []byte) string {
	return "0x" + hex.EncodeToString(b)
}

// FormatBase64 encodes b as a base64 constant ("0b" and RFC 4648 base64
// with padding).
func FormatBase64(b []byte) string {
	return "0b" + base64.StdEncoding.EncodeToString(b)
}

// splitList splits a list value (RFC 7143 §6.1: list-of-values) into its
// items. It reports false when an item is empty.
func splitList(v string) ([]string, bool) {
	items := strings.Split(v, ",")
	for _, it := range items {
		if it == "" {
			return nil, false
		}
	}
	return items, true
}
