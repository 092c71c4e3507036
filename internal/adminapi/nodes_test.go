package adminapi

import (
	"context"
	"errors"
	"net/http"
	"testing"
)

// fakeNodes is a fixed node list, or an error.
type fakeNodes struct {
	ns  []Node
	err error
}

func (f fakeNodes) List(context.Context) ([]Node, error) { return f.ns, f.err }

func TestNodeRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	_, err := e.cl.ListNodes(ctx)
	apiErr(t, err, http.StatusNotImplemented, "does not report cluster nodes")

	e.s.SetNodes(fakeNodes{ns: []Node{
		{ID: "01", Name: "a", State: "up", Labels: map[string]string{"zone": "z1"}},
		{ID: "02", Name: "b", State: "down", Self: true},
		{ID: "03", Name: "dup", State: "up"},
		{ID: "04", Name: "dup", State: "up"},
	}})
	ns, err := e.cl.ListNodes(ctx)
	if err != nil || len(ns) != 4 || ns[0].Labels["zone"] != "z1" {
		t.Fatalf("ListNodes = %+v, %v", ns, err)
	}
	for id, want := range map[string]string{"": "02", "self": "02", "01": "01", "a": "01", "04": "04"} {
		n, err := e.cl.GetNode(ctx, id)
		if err != nil || n.ID != want {
			t.Errorf("GetNode(%q) = %+v, %v; want node %s", id, n, err, want)
		}
	}
	_, err = e.cl.GetNode(ctx, "nope")
	apiErr(t, err, http.StatusNotFound, "stave node list")
	_, err = e.cl.GetNode(ctx, "dup")
	apiErr(t, err, http.StatusNotFound, "give the node's ID")
	get(t, e, "/v1/nodes", http.StatusOK)

	e.s.SetNodes(fakeNodes{err: errors.New("etcd down")})
	_, err = e.cl.ListNodes(ctx)
	apiErr(t, err, http.StatusServiceUnavailable, "etcd down")
}

func TestFindNodeSelfMissing(t *testing.T) {
	if _, err := findNode([]Node{{ID: "01", Name: "a"}}, "self"); !errors.Is(err, ErrNoNode) {
		t.Errorf("findNode(self) without self = %v, want ErrNoNode", err)
	}
}
