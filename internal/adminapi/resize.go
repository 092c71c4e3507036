package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// ResizeRequest is the body of POST /v1/volumes/{name}/resize: the new
// size, larger than the current one (volumes only grow).
type ResizeRequest struct {
	// Size is the new size: a JSON number of bytes, or a string with a
	// unit such as "2GiB" (volume.ParseSize).
	Size SizeValue `json:"size"`
}

// SizeValue is a size in bytes that decodes from a JSON number or from a
// string with a unit ("2GiB"), and encodes as a number.
type SizeValue int64

// UnmarshalJSON implements json.Unmarshaler.
func (v *SizeValue) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		n, err := volume.ParseSize(s)
		if err != nil {
			return err
		}
		*v = SizeValue(n)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("size %s: give a whole number of bytes or a string such as \"2GiB\"", b)
	}
	*v = SizeValue(n)
	return nil
}

// Resizer is what the resize route needs from Targets, when they
// implement it, to grow a served volume online.
type Resizer interface {
	// CheckResize reports whether the volume's storage can grow, before
	// the catalogue changes.
	CheckResize(sp *volume.Spec) error
	// Resize grows the volume's storage and logical unit to sp.Size (the
	// LU then reports CAPACITY DATA HAS CHANGED). A volume not served by
	// this node is left to the node that serves it.
	Resize(ctx context.Context, sp *volume.Spec) error
}

// resize serves POST /v1/volumes/{name}/resize: the catalogue (etcd)
// first, then the storage and the LU, so the request returns once the
// initiators can see the new capacity.
func (s *Server) resize(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req ResizeRequest
	if !decode(w, r, "a resize request (e.g. {\"size\": \"2GiB\"})", &req) {
		return
	}
	if req.Size <= 0 {
		s.fail(w, "resize volume", fmt.Errorf("%w: size %d: give the new, larger size, e.g. \"2GiB\"", volume.ErrInvalid, req.Size))
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	sp, err := s.vols.Get(name)
	if err != nil {
		s.fail(w, "resize volume", err)
		return
	}
	rz, _ := s.targets.(Resizer)
	if rz != nil {
		if err := rz.CheckResize(sp); err != nil {
			s.fail(w, "resize volume", err)
			return
		}
	}
	sp, err = s.vols.Resize(r.Context(), name, int64(req.Size))
	if err != nil {
		s.fail(w, "resize volume", err)
		return
	}
	if rz != nil {
		if err := rz.Resize(context.WithoutCancel(r.Context()), sp); err != nil {
			s.log.Error("volume resized in the catalogue but its storage did not grow", logkey.Volume, name, logkey.Err, err)
			s.fail(w, "resize volume", fmt.Errorf("volume %q is now %d bytes in the catalogue but growing its storage failed: %w "+
				"(the daemon retries; see its log and `stave volume get %s`)", name, sp.Size, err, name))
			return
		}
	}
	writeJSON(w, http.StatusOK, s.toVolume(sp, s.sessionCounts()))
}
