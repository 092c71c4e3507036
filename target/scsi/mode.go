package scsi

import (
	"encoding/binary"
	"math/bits"

	"stave.dev/stave/target/scsi/sense"
)

// modeFlag bits mirror the mode parameters the hot path consults.
const (
	modeDSense uint32 = 1 << iota // control page D_SENSE
	modeSWP                       // control page SWP
	modeWCE                       // caching page WCE
	modeTAS                       // control page TAS
)

// Mode page codes (SPC-4 §7.5, SBC-3 §6.4).
const (
	pageRWErrorRecovery = 0x01
	pageCaching         = 0x08
	pageControl         = 0x0a
	pageInfoExceptions  = 0x1c
	pageAll             = 0x3f
	subpageControlExt   = 0x01
	subpageAll          = 0xff
)

// modePage is one mode page with its header (page code byte, subpage and
// length fields), as MODE SENSE returns it.
type modePage struct {
	code, sub byte
	data      []byte
}

// modePages holds the current values of every page, in MODE SENSE order.
type modePages struct {
	pages []modePage
}

// defaultModePages returns the default (and initial current) values.
func defaultModePages() modePages {
	rw := make([]byte, 12)
	rw[0], rw[1] = pageRWErrorRecovery, 0x0a
	rw[2] = 0xc0 // AWRE, ARRE
	caching := make([]byte, 20)
	caching[0], caching[1] = pageCaching, 0x12
	caching[2] = 0x04 // WCE
	ctl := make([]byte, 12)
	ctl[0], ctl[1] = pageControl, 0x0a
	ctl[2] = 0x02                               // GLTSD
	ctl[3] = 0x10                               // QUEUE ALGORITHM MODIFIER 1: unrestricted
	binary.BigEndian.PutUint16(ctl[8:], 0xffff) // BUSY TIMEOUT PERIOD: unlimited
	ext := make([]byte, 32)
	ext[0], ext[1] = 0x40|pageControl, subpageControlExt // SPF
	binary.BigEndian.PutUint16(ext[2:], 0x1c)
	ie := make([]byte, 12)
	ie[0], ie[1] = pageInfoExceptions, 0x0a
	ie[2] = 0x08 // DEXCPT
	return modePages{pages: []modePage{
		{pageRWErrorRecovery, 0, rw},
		{pageCaching, 0, caching},
		{pageControl, 0, ctl},
		{pageControl, subpageControlExt, ext},
		{pageInfoExceptions, 0, ie},
	}}
}

// changeable returns the changeable-bits mask of a page (same length).
func changeable(p modePage) []byte {
	m := make([]byte, len(p.data))
	switch {
	case p.code == pageCaching:
		m[2] = 0x04 // WCE
	case p.code == pageControl && p.sub == 0:
		m[2] = 0x04 // D_SENSE
		m[4] = 0x08 // SWP
		m[5] = 0x40 // TAS
	}
	return m
}

// flags computes the modeFlag bits of the current values.
func (m modePages) flags() uint32 {
	var f uint32
	for _, p := range m.pages {
		switch {
		case p.code == pageCaching:
			if p.data[2]&0x04 != 0 {
				f |= modeWCE
			}
		case p.code == pageControl && p.sub == 0:
			if p.data[2]&0x04 != 0 {
				f |= modeDSense
			}
			if p.data[4]&0x08 != 0 {
				f |= modeSWP
			}
			if p.data[5]&0x40 != 0 {
				f |= modeTAS
			}
		}
	}
	return f
}

// clone deep-copies the pages.
func (m modePages) clone() modePages {
	out := modePages{pages: make([]modePage, len(m.pages))}
	for i, p := range m.pages {
		out.pages[i] = modePage{p.code, p.sub, append([]byte(nil), p.data...)}
	}
	return out
}

// MODE SENSE(6/10) (SPC-4 §6.11-6.12).
func (c *cmd) modeSense() error {
	l := c.lu
	cdb := c.cdb
	six := len(cdb) == 6
	dbd := cdb[1]&0x08 != 0
	llbaa := !six && cdb[1]&0x10 != 0
	pc := cdb[2] >> 6
	page := cdb[2] & 0x3f
	sub := cdb[3]
	var alloc uint32
	if six {
		alloc = uint32(cdb[4])
	} else {
		alloc = uint32(binary.BigEndian.Uint16(cdb[7:]))
	}
	if pc == 3 {
		return &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyIllegalRequest,
			ASC: sense.ASCSavingParametersNotSupported, Field: &sense.FieldPointer{CDB: true, Byte: 2, Bit: 7}}
	}
	l.mode.Lock()
	cur := l.mode.pages.clone()
	l.mode.Unlock()
	def := defaultModePages()

	var body []byte
	found, codeFound := false, false
	for i, p := range cur.pages {
		var sel bool
		switch {
		case page == pageAll && sub == 0:
			sel = p.sub == 0
		case page == pageAll && sub == subpageAll:
			sel = true
		case p.code == page && sub == subpageAll:
			sel = true
		default:
			sel = p.code == page && p.sub == sub
		}
		if p.code == page {
			codeFound = true
		}
		if !sel {
			continue
		}
		found = true
		switch pc {
		case 0:
			body = append(body, p.data...)
		case 1:
			m := changeable(p)
			copy(m, p.data[:2])
			if p.sub != 0 {
				copy(m, p.data[:4])
			}
			body = append(body, m...)
		case 2:
			body = append(body, def.pages[i].data...)
		}
	}
	if !found {
		if page == pageAll || codeFound {
			return sense.InvalidCDBField(3, -1)
		}
		return sense.InvalidCDBField(2, 5)
	}

	var bd []byte
	if !dbd {
		nb := l.numBlocks.Load()
		if pc == 1 {
			nb = 0
		}
		if llbaa {
			bd = make([]byte, 16)
			binary.BigEndian.PutUint64(bd, nb)
			if pc != 1 {
				binary.BigEndian.PutUint32(bd[12:], l.bs)
			}
		} else {
			bd = make([]byte, 8)
			binary.BigEndian.PutUint32(bd, uint32(min(nb, 0xffffffff)))
			if pc != 1 {
				bd[5], bd[6], bd[7] = byte(l.bs>>16), byte(l.bs>>8), byte(l.bs)
			}
		}
	}
	dsp := byte(0x10) // DPOFUA
	if l.writeProtected() {
		dsp |= 0x80 // WP
	}
	var out []byte
	if six {
		out = make([]byte, 4, 4+len(bd)+len(body))
		out[2] = dsp
		out[3] = byte(len(bd))
		out = append(out, bd...)
		out = append(out, body...)
		if len(out)-1 > 0xff {
			out = out[:0x100]
		}
		out[0] = byte(len(out) - 1)
	} else {
		out = make([]byte, 8, 8+len(bd)+len(body))
		out[3] = dsp
		if llbaa && !dbd {
			out[4] = 0x01 // LONGLBA
		}
		binary.BigEndian.PutUint16(out[6:], uint16(len(bd)))
		out = append(out, bd...)
		out = append(out, body...)
		binary.BigEndian.PutUint16(out, uint16(len(out)-2))
	}
	c.res.Data = truncate(out, alloc)
	return nil
}

// MODE SELECT(6/10) (SPC-4 §6.9-6.10). Every page is validated against
// the changeable mask before any value changes; a change establishes MODE
// PARAMETERS CHANGED for the other I_T nexuses (SPC-4 §7.5.1).
func (c *cmd) modeSelect() error {
	l := c.lu
	cdb := c.cdb
	six := len(cdb) == 6
	if cdb[1]&0x01 != 0 { // SP: no saved pages
		return sense.InvalidCDBField(1, 0)
	}
	if cdb[1]&0x10 == 0 { // PF=0: only the page format is supported
		return sense.InvalidCDBField(1, 4)
	}
	var plen, hdr int
	if six {
		plen, hdr = int(cdb[4]), 4
	} else {
		plen, hdr = int(binary.BigEndian.Uint16(cdb[7:])), 8
	}
	if plen == 0 {
		return nil
	}
	if plen < hdr || len(c.t.DataOut) < plen {
		return errParamListLength()
	}
	p := c.t.DataOut[:plen]
	var bdl, bdlOff int
	long := false
	if six {
		bdl, bdlOff = int(p[3]), 3
	} else {
		bdl, bdlOff = int(binary.BigEndian.Uint16(p[6:])), 6
		long = p[4]&0x01 != 0
	}
	want := 8
	if long {
		want = 16
	}
	if bdl != 0 && bdl != want {
		return sense.InvalidParamField(bdlOff, -1)
	}
	if hdr+bdl > plen {
		return errParamListLength()
	}
	if bdl != 0 {
		d := p[hdr : hdr+bdl]
		var nb uint64
		var blen uint32
		if long {
			nb, blen = binary.BigEndian.Uint64(d), binary.BigEndian.Uint32(d[12:])
		} else {
			nb = uint64(binary.BigEndian.Uint32(d))
			blen = uint32(d[5])<<16 | uint32(d[6])<<8 | uint32(d[7])
		}
		cur := l.numBlocks.Load()
		if nb != 0 && nb != cur && !(nb == 0xffffffff && !long && cur > 0xffffffff) {
			return sense.InvalidParamField(hdr, -1)
		}
		if blen != l.bs {
			if long {
				return sense.InvalidParamField(hdr+12, -1)
			}
			return sense.InvalidParamField(hdr+5, -1)
		}
	}
	l.mode.Lock()
	defer l.mode.Unlock()
	next := l.mode.pages.clone()
	changed := false
	for o := hdr + bdl; o < plen; {
		if plen-o < 2 {
			return errParamListLength()
		}
		code := p[o] & 0x3f
		spf := p[o]&0x40 != 0
		var sub byte
		var n, ph int
		if spf {
			if plen-o < 4 {
				return errParamListLength()
			}
			sub = p[o+1]
			n, ph = int(binary.BigEndian.Uint16(p[o+2:]))+4, 4
		} else {
			n, ph = int(p[o+1])+2, 2
		}
		idx := -1
		for i, pg := range next.pages {
			if pg.code == code && pg.sub == sub && (pg.sub != 0) == spf {
				idx = i
				break
			}
		}
		if idx < 0 {
			return sense.InvalidParamField(o, 5)
		}
		pg := next.pages[idx]
		if n != len(pg.data) {
			return sense.InvalidParamField(o+ph-1, -1)
		}
		if o+n > plen {
			return errParamListLength()
		}
		mask := changeable(pg)
		for i := ph; i < n; i++ {
			nv := p[o+i]
			if diff := (nv ^ pg.data[i]) &^ mask[i]; diff != 0 {
				return sense.InvalidParamField(o+i, bits.Len8(diff)-1)
			}
			if nv != pg.data[i] {
				pg.data[i] = nv
				changed = true
			}
		}
		o += n
	}
	if changed {
		l.mode.pages = next
		l.flags.Store(next.flags())
		self := c.t.Nexus
		l.raiseUA(func(n Nexus) bool { return n != self }, sense.ASCModeParametersChanged)
	}
	return nil
}
