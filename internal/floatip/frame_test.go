package floatip

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
)

var testMAC = [6]byte{0x02, 0, 0, 0, 0, 0x0a}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGratuitousARPGolden(t *testing.T) {
	addr := netip.MustParseAddr("10.99.0.100")
	for _, tc := range []struct {
		op   arpOp
		want string
	}{
		{arpRequest, `ffffffffffff 02000000000a 0806
			0001 0800 06 04 0001 02000000000a 0a630064 000000000000 0a630064
			000000000000000000000000000000000000`},
		{arpReply, `ffffffffffff 02000000000a 0806
			0001 0800 06 04 0002 02000000000a 0a630064 02000000000a 0a630064
			000000000000000000000000000000000000`},
	} {
		t.Run(tc.op.String(), func(t *testing.T) {
			prefix := []byte("keep")
			got := appendGratuitousARP(append([]byte(nil), prefix...), testMAC, addr, tc.op)
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("appendGratuitousARP overwrote the bytes it appends to")
			}
			got = got[len(prefix):]
			if want := unhex(t, tc.want); !bytes.Equal(got, want) {
				t.Errorf("frame\n got %x\nwant %x", got, want)
			}
			if len(got) != minFrameLen {
				t.Errorf("len = %d, want %d", len(got), minFrameLen)
			}
		})
	}
}

func TestUnsolicitedNA(t *testing.T) {
	addr := netip.MustParseAddr("fd00:99::100")
	f := appendUnsolicitedNA(nil, testMAC, addr)
	if len(f) != 86 {
		t.Fatalf("len = %d, want 86", len(f))
	}
	want := unhex(t, `333300000001 02000000000a 86dd
		60000000 0020 3a ff
		fd000099000000000000000000000100
		ff020000000000000000000000000001`)
	if !bytes.Equal(f[:54], want) {
		t.Errorf("Ethernet+IPv6 header\n got %x\nwant %x", f[:54], want)
	}
	icmp := f[54:]
	wantICMP := unhex(t, `88 00 0000 20000000
		fd000099000000000000000000000100
		02 01 02000000000a`)
	copy(wantICMP[2:4], icmp[2:4]) // checked below
	if !bytes.Equal(icmp, wantICMP) {
		t.Errorf("ICMPv6\n got %x\nwant %x", icmp, wantICMP)
	}
	// RFC 4443 §2.3, computed independently: the ones' complement sum of
	// pseudo-header and message, checksum included, is 0xffff.
	var pseudo []byte
	pseudo = append(pseudo, f[22:54]...) // source and destination
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(icmp)))
	pseudo = append(pseudo, 0, 0, 0, 58)
	pseudo = append(pseudo, icmp...)
	var sum uint64
	for i := 0; i+1 < len(pseudo); i += 2 {
		sum += uint64(pseudo[i])<<8 | uint64(pseudo[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Errorf("checksum %04x does not verify (sum %04x)", binary.BigEndian.Uint16(icmp[2:]), sum)
	}
}
