package login

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParseText(t *testing.T) {
	long := strings.Repeat("a", 256)
	for _, c := range []struct {
		name string
		in   string
		want []KeyValue
		err  error
	}{
		{name: "empty", in: "", want: nil},
		{name: "only pad", in: "\x00\x00", want: nil},
		{name: "one", in: "InitiatorName=iqn.x\x00", want: []KeyValue{{"InitiatorName", "iqn.x"}}},
		{name: "two", in: "A=1\x00B=2\x00", want: []KeyValue{{"A", "1"}, {"B", "2"}}},
		{name: "pad", in: "A=1\x00\x00\x00\x00", want: []KeyValue{{"A", "1"}}},
		{name: "empty value", in: "A=\x00", want: []KeyValue{{"A", ""}}},
		{name: "equals in value", in: "A=b=c\x00", want: []KeyValue{{"A", "b=c"}}},
		{name: "spaces in value", in: "InitiatorAlias=Web Server 4\x00", want: []KeyValue{{"InitiatorAlias", "Web Server 4"}}},
		{name: "key chars", in: "X-com.example.a+b@c_d=1\x00", want: []KeyValue{{"X-com.example.a+b@c_d", "1"}}},
		{name: "X#", in: "X#NodeArchitecture=Stave\x00", want: []KeyValue{{"X#NodeArchitecture", "Stave"}}},
		{name: "lower-case start (RFC 7144)", in: "iSCSIProtocolLevel=1\x00", want: []KeyValue{{"iSCSIProtocolLevel", "1"}}},
		{name: "max key", in: strings.Repeat("K", 63) + "=1\x00", want: []KeyValue{{strings.Repeat("K", 63), "1"}}},
		{name: "max value", in: "A=" + long[:255] + "\x00", want: []KeyValue{{"A", long[:255]}}},
		{name: "large CHAP_C", in: "CHAP_C=0x" + strings.Repeat("ab", 1024) + "\x00",
			want: []KeyValue{{"CHAP_C", "0x" + strings.Repeat("ab", 1024)}}},

		{name: "not terminated", in: "A=1", err: ErrMalformedText},
		{name: "second not terminated", in: "A=1\x00B=2", err: ErrMalformedText},
		{name: "no equals", in: "A\x00", err: ErrMalformedText},
		{name: "empty key", in: "=1\x00", err: ErrMalformedText},
		{name: "empty pair in middle", in: "A=1\x00\x00B=2\x00", err: ErrMalformedText},
		{name: "bad first char", in: "1A=1\x00", err: ErrMalformedText},
		{name: "bad char", in: "A B=1\x00", err: ErrMalformedText},
		{name: "hash not after X", in: "A#B=1\x00", err: ErrMalformedText},
		{name: "key too long", in: strings.Repeat("K", 64) + "=1\x00", err: ErrTextTooLong},
		{name: "value too long", in: "A=" + long + "\x00", err: ErrTextTooLong},
		{name: "CHAP_C too long", in: "CHAP_C=0x" + strings.Repeat("a", 8191) + "\x00", err: ErrTextTooLong},
		{name: "duplicate", in: "A=1\x00B=2\x00A=1\x00", err: ErrDuplicateKey},
		{name: "text too long", in: strings.Repeat("A=1\x00", MaxTextLength/4+1), err: ErrTextTooLong},
		{name: "too many keys", in: manyKeys(MaxKeys + 1), err: ErrTooManyKeys},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseText([]byte(c.in))
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("err = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("got %q, want %q", got, c.want)
				}
			}
		})
	}
	if got, err := ParseText([]byte(manyKeys(MaxKeys))); err != nil || len(got) != MaxKeys {
		t.Fatalf("MaxKeys keys: %d, %v", len(got), err)
	}
}

func manyKeys(n int) string {
	var b []byte
	for i := range n {
		b = append(b, 'K')
		b = append(b, []byte(strings.Repeat("a", i/26))...)
		b = append(b, byte('a'+i%26), '=', '1', 0)
	}
	return string(b)
}

func TestParseTextDoesNotAlias(t *testing.T) {
	in := []byte("A=1\x00")
	kvs, err := ParseText(in)
	if err != nil {
		t.Fatal(err)
	}
	in[0], in[2] = 'Z', '9'
	if kvs[0] != (KeyValue{"A", "1"}) {
		t.Fatalf("result changed with input: %v", kvs)
	}
}

func TestAppendText(t *testing.T) {
	got := AppendText([]byte("X=0\x00"), KeyValue{"A", "1"}, KeyValue{"HeaderDigest", "CRC32C,None"})
	want := "X=0\x00A=1\x00HeaderDigest=CRC32C,None\x00"
	if string(got) != want {
		t.Fatalf("%q", got)
	}
	if got := AppendText(nil); len(got) != 0 {
		t.Fatalf("%q", got)
	}
}

func TestSplitText(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10)
	for _, c := range []struct{ max, parts int }{
		{0, 1}, {-1, 1}, {100, 1}, {1000, 1}, {99, 2}, {10, 10}, {7, 15}, {1, 100},
	} {
		parts := SplitText(data, c.max)
		if len(parts) != c.parts {
			t.Errorf("max %d: %d parts, want %d", c.max, len(parts), c.parts)
		}
		if !bytes.Equal(bytes.Join(parts, nil), data) {
			t.Errorf("max %d: parts do not join", c.max)
		}
		for i, p := range parts {
			if c.max > 0 && len(p) > c.max {
				t.Errorf("max %d: part %d has %d bytes", c.max, i, len(p))
			}
			if i < len(parts)-1 && cap(p) != len(p) {
				t.Errorf("max %d: part %d can be appended into the next", c.max, i)
			}
		}
	}
	if parts := SplitText(nil, 10); len(parts) != 1 || len(parts[0]) != 0 {
		t.Errorf("nil: %q", parts)
	}
}

func TestParseNumber(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true},
		{"262144", 262144, true},
		{"007", 7, true},
		{"0x0", 0, true},
		{"0x40000", 262144, true},
		{"0XFFFF", 65535, true},
		{"0xffffffffffffffff", 1<<64 - 1, true},
		{"18446744073709551615", 1<<64 - 1, true},
		{"18446744073709551616", 0, false},
		{"0x10000000000000000", 0, false},
		{"", 0, false},
		{"0x", 0, false},
		{"0xg", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1.5", 0, false},
		{"0b AQ==", 0, false},
		{"0x+1", 0, false},
	} {
		got, err := ParseNumber(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseNumber(%q) = %d, %v", c.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidValue) {
			t.Errorf("ParseNumber(%q): %v does not wrap ErrInvalidValue", c.in, err)
		}
	}
}

func TestParseBinary(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []byte
		ok   bool
	}{
		{"0x00", []byte{0}, true},
		{"0x0102ff", []byte{1, 2, 0xff}, true},
		{"0X0102FF", []byte{1, 2, 0xff}, true},
		{"0x102", []byte{1, 2}, true}, // implied leading zero
		{"0bAQL/", []byte{1, 2, 0xff}, true},
		{"0BAQL/", []byte{1, 2, 0xff}, true},
		{"0bAQ==", []byte{1}, true},
		{"0bAQ", nil, false}, // padding required
		{"0bA", nil, false},
		{"0b!!!!", nil, false},
		{"0x", nil, false},
		{"0b", nil, false},
		{"0xzz", nil, false},
		{"1234", nil, false},
		{"", nil, false},
		{"0y12", nil, false},
	} {
		got, err := ParseBinary(c.in)
		if (err == nil) != c.ok || (c.ok && !bytes.Equal(got, c.want)) {
			t.Errorf("ParseBinary(%q) = %x, %v", c.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidValue) {
			t.Errorf("ParseBinary(%q): %v does not wrap ErrInvalidValue", c.in, err)
		}
	}
	b := []byte{0, 1, 2, 0xfe, 0xff}
	for _, s := range []string{FormatHex(b), FormatBase64(b)} {
		got, err := ParseBinary(s)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("round trip %q: %x, %v", s, got, err)
		}
	}
	if FormatHex(b) != "0x000102feff" || FormatBase64(b) != "0bAAEC/v8=" {
		t.Errorf("%s %s", FormatHex(b), FormatBase64(b))
	}
}
