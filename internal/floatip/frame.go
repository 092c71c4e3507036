package floatip

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// Announcement frames, built by appending (STYLE.md §8). Both are whole
// Ethernet II frames without FCS, for an AF_PACKET SOCK_RAW socket.
//
// Gratuitous ARP (RFC 826 packet, RFC 5227 §3 "ARP Announcement"), 60 bytes:
//
//	 0  dst MAC ff:ff:ff:ff:ff:ff   6  src MAC         12  EtherType 0x0806
//	14  HTYPE 1  16  PTYPE 0x0800   18  HLEN 6  19  PLEN 4  20  OPER 1|2
//	22  SHA = MAC  28  SPA = addr   32  THA (request: zero; reply: MAC)
//	38  TPA = addr  42  zero padding to the 60-byte Ethernet minimum
//
// SPA == TPA makes it gratuitous; Linux (net/ipv4/arp.c arp_is_garp)
// then overrides an existing neighbour entry at once, even within its
// locktime, and for a reply it also requires THA == SHA.
//
// Unsolicited Neighbor Advertisement (RFC 4861 §4.4, §7.2.6), 86 bytes:
//
//	 0  dst MAC 33:33:00:00:00:01   6  src MAC         12  EtherType 0x86dd
//	14  IPv6: version 6, payload length 32, next header 58, hop limit 255,
//	    source = addr, destination ff02::1 (all nodes)
//	54  ICMPv6 type 136, code 0, checksum (RFC 4443 §2.3)
//	58  flags R=0 S=0 O=1, 29 reserved bits
//	62  target address = addr
//	78  option 2 (target link-layer address), length 1 (8 octets), MAC
//
// The Override flag makes receivers replace the link-layer address of an
// existing entry (RFC 4861 §7.2.5).

const (
	// minFrameLen is the Ethernet minimum frame length without the FCS.
	minFrameLen = 60

	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd

	arpHTypeEthernet = 1

	protoICMPv6       = 58
	ndpHopLimit       = 255
	icmpv6NeighborAdv = 136
	naFlagOverride    = 0x20
	ndpOptTargetLLA   = 2
	naLen             = 24 // ICMPv6 NA without options
	naOptLen          = 8  // target link-layer address option for Ethernet
)

// arpOp is an ARP operation code (RFC 826).
type arpOp uint16

const (
	arpRequest arpOp = 1
	arpReply   arpOp = 2
)

// String returns the operation's name.
func (o arpOp) String() string {
	switch o {
	case arpRequest:
		return "request"
	case arpReply:
		return "reply"
	}
	return "arp-op-" + strconv.Itoa(int(o))
}

// broadcastMAC is the Ethernet broadcast address.
func broadcastMAC() [6]byte { return [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }

// allNodesMAC is the Ethernet multicast address of ff02::1 (RFC 2464 §7).
func allNodesMAC() [6]byte { return [6]byte{0x33, 0x33, 0, 0, 0, 1} }

// allNodes is the IPv6 link-local all-nodes multicast address.
func allNodes() netip.Addr { return netip.AddrFrom16([16]byte{0: 0xff, 1: 0x02, 15: 1}) }

// appendGratuitousARP appends a broadcast gratuitous ARP frame of
// operation op announcing that addr (IPv4) is at mac.
func appendGratuitousARP(b []byte, mac [6]byte, addr netip.Addr, op arpOp) []byte {
	start := len(b)
	dst := broadcastMAC()
	b = append(b, dst[:]...)
	b = append(b, mac[:]...)
	b = binary.BigEndian.AppendUint16(b, etherTypeARP)
	b = binary.BigEndian.AppendUint16(b, arpHTypeEthernet)
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv4)
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, uint16(op))
	ip := addr.As4()
	b = append(b, mac[:]...)
	b = append(b, ip[:]...)
	if op == arpReply {
		b = append(b, mac[:]...)
	} else {
		b = append(b, 0, 0, 0, 0, 0, 0)
	}
	b = append(b, ip[:]...)
	for len(b)-start < minFrameLen {
		b = append(b, 0)
	}
	return b
}

// appendUnsolicitedNA appends an unsolicited neighbor advertisement, with
// the Override flag, announcing to all nodes that addr (IPv6) is at mac.
func appendUnsolicitedNA(b []byte, mac [6]byte, addr netip.Addr) []byte {
	dstMAC := allNodesMAC()
	b = append(b, dstMAC[:]...)
	b = append(b, mac[:]...)
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv6)

	src, dst := addr.As16(), allNodes().As16()
	b = binary.BigEndian.AppendUint32(b, 6<<28) // version, traffic class 0, flow label 0
	b = binary.BigEndian.AppendUint16(b, naLen+naOptLen)
	b = append(b, protoICMPv6, ndpHopLimit)
	b = append(b, src[:]...)
	b = append(b, dst[:]...)

	icmp := len(b)
	b = append(b, icmpv6NeighborAdv, 0, 0, 0) // type, code, checksum (below)
	b = append(b, naFlagOverride, 0, 0, 0)
	b = append(b, src[:]...)
	b = append(b, ndpOptTargetLLA, naOptLen/8)
	b = append(b, mac[:]...)
	binary.BigEndian.PutUint16(b[icmp+2:], icmpv6Checksum(src, dst, b[icmp:]))
	return b
}

// icmpv6Checksum returns the checksum of an ICMPv6 message whose checksum
// field is zero, over the IPv6 pseudo-header (RFC 8200 §8.1).
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(p []byte) {
		for len(p) >= 2 {
			sum += uint32(binary.BigEndian.Uint16(p))
			p = p[2:]
		}
		if len(p) == 1 {
			sum += uint32(p[0]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += uint32(len(msg)) // upper-layer packet length (< 65536 here)
	sum += protoICMPv6
	add(msg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
