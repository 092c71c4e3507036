package adminapi

import (
	"context"
	"net/http"
	"testing"

	"stave.dev/stave/internal/volume"
)

// resizingTargets is a fakeTargets that also grows volumes.
type resizingTargets struct {
	*fakeTargets
	resized map[string]int64
}

func (r *resizingTargets) CheckResize(*volume.Spec) error { return nil }

func (r *resizingTargets) Resize(_ context.Context, s *volume.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resized[s.Name] = s.Size
	return nil
}

func TestResize(t *testing.T) {
	e := newEnv(t)
	rt := &resizingTargets{fakeTargets: e.tg, resized: map[string]int64{}}
	e.s.targets = rt
	ctx := ctxT(t)
	if _, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := e.cl.ResizeVolume(ctx, "v", 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if v.Size != 2<<20 || rt.resized["v"] != 2<<20 {
		t.Fatalf("size %d, resized %v", v.Size, rt.resized)
	}
	if got, _ := e.cat.Get("v"); got.Size != 2<<20 {
		t.Fatalf("catalogue size %d", got.Size)
	}
	_, err = e.cl.ResizeVolume(ctx, "v", 1<<20)
	apiErr(t, err, http.StatusBadRequest, "shrinking is not supported")
	_, err = e.cl.ResizeVolume(ctx, "v", 3<<20+1)
	apiErr(t, err, http.StatusBadRequest, "not a multiple of the 512-byte block size")
	_, err = e.cl.ResizeVolume(ctx, "nope", 3<<20)
	apiErr(t, err, http.StatusNotFound, "nope")
	for _, tc := range []struct{ body, want string }{
		{`{"size": "3MiB"}`, ""},
		{`{"size": "3MB"}`, "ambiguous"},
		{`{"size": "3 parsecs"}`, "unknown unit"},
		{`{"size": 0}`, "larger size"},
		{`{"sise": 1}`, "unknown field"},
	} {
		var out Volume
		err := e.cl.do(ctx, http.MethodPost, "/v1/volumes/v/resize", rawJSON(tc.body), &out)
		if tc.want == "" {
			if err != nil || out.Size != 3<<20 {
				t.Errorf("%s: %v, size %d", tc.body, err, out.Size)
			}
			continue
		}
		apiErr(t, err, http.StatusBadRequest, tc.want)
	}
}

// rawJSON is a request body sent as it is.
type rawJSON string

// MarshalJSON implements json.Marshaler.
func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }
