package adminapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"stave.dev/stave/internal/logkey"
)

// Node routes:
//
//	GET /v1/nodes        every node that ever registered, up or down → []Node
//	GET /v1/nodes/{id}   one node by ID or name; "self" is this node → Node

// Node is a cluster node as the API reports it.
type Node struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Host string `json:"host"`
	// State is "up" while the node's leased record exists in etcd, else
	// "down" (stopped, dead, or cut off from etcd).
	State string `json:"state"`
	// Self is true for the node that answered.
	Self bool `json:"self"`
	// Portals are the advertised iSCSI portals, HOST:PORT.
	Portals []string `json:"portals"`
	// Admin is the node's admin API address.
	Admin  string            `json:"admin,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Capacity is the node's space; nil when unknown.
	Capacity *NodeCapacity `json:"capacity,omitempty"`
	// EtcdMemberID is the node's embedded etcd member (hex), empty with an
	// external etcd; EtcdMember says whether etcd lists that member.
	EtcdMemberID   string    `json:"etcd_member_id,omitempty"`
	EtcdMember     bool      `json:"etcd_member"`
	EtcdClientURLs []string  `json:"etcd_client_urls,omitempty"`
	Version        string    `json:"version"`
	Started        time.Time `json:"started"`
	// Updated is when the node last wrote its record.
	Updated time.Time `json:"updated"`
}

// NodeCapacity is a node's space in bytes.
type NodeCapacity struct {
	// Source is "pool" or "data_dir" (no pool: the data directory's file
	// system).
	Source string `json:"source"`
	Size   int64  `json:"size"`
	Free   int64  `json:"free"`
}

// ErrNoNode means no node has the requested ID or name.
var ErrNoNode = errors.New("adminapi: no such node")

// Nodes is what the node routes need from the cluster. Implementations
// must be safe for concurrent use.
type Nodes interface {
	// List returns every node, sorted by name; Self marks this one.
	List(ctx context.Context) ([]Node, error)
}

// nodesHolder boxes a Nodes for an atomic pointer.
type nodesHolder struct{ n Nodes }

// SetNodes sets the source of GET /v1/nodes; until it is called the node
// routes answer 501. Call it before Serve.
func (s *Server) SetNodes(n Nodes) { s.nodes.Store(&nodesHolder{n}) }

func (s *Server) nodeSource(w http.ResponseWriter, r *http.Request) Nodes {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return nil
	}
	h := s.nodes.Load()
	if h == nil {
		writeError(w, http.StatusNotImplemented, "this daemon does not report cluster nodes")
		return nil
	}
	return h.n
}

func (s *Server) nodeList(w http.ResponseWriter, r *http.Request) {
	n := s.nodeSource(w, r)
	if n == nil {
		return
	}
	ns, err := n.List(r.Context())
	if err != nil {
		s.nodeFail(w, err)
		return
	}
	if ns == nil {
		ns = []Node{}
	}
	writeJSON(w, http.StatusOK, ns)
}

func (s *Server) nodeGet(w http.ResponseWriter, r *http.Request) {
	n := s.nodeSource(w, r)
	if n == nil {
		return
	}
	id := r.PathValue("id")
	ns, err := n.List(r.Context())
	if err != nil {
		s.nodeFail(w, err)
		return
	}
	nd, err := findNode(ns, id)
	if err != nil {
		writeError(w, http.StatusNotFound, strings.TrimPrefix(err.Error(), "adminapi: "))
		return
	}
	writeJSON(w, http.StatusOK, nd)
}

// findNode picks the node named by id: "self", an ID, or a name (a name
// that two nodes share is refused).
func findNode(ns []Node, id string) (*Node, error) {
	var byName []int
	for i := range ns {
		switch {
		case id == "self" && ns[i].Self, ns[i].ID == id:
			return &ns[i], nil
		case ns[i].Name == id:
			byName = append(byName, i)
		}
	}
	switch len(byName) {
	case 1:
		return &ns[byName[0]], nil
	case 0:
		if id == "self" {
			return nil, fmt.Errorf("%w: this node has not registered in etcd yet: try again in a few seconds", ErrNoNode)
		}
		return nil, fmt.Errorf("%w: %q: see `stave node list` for the IDs and names", ErrNoNode, id)
	}
	return nil, fmt.Errorf("%w: %d nodes are named %q: give the node's ID (`stave node list`)", ErrNoNode, len(byName), id)
}

func (s *Server) nodeFail(w http.ResponseWriter, err error) {
	s.log.Warn("node list failed", logkey.Err, err)
	writeError(w, http.StatusServiceUnavailable, "cannot read the node records from etcd: "+err.Error())
}

// ListNodes returns every node of the cluster, up or down.
func (c *Client) ListNodes(ctx context.Context) ([]Node, error) {
	var ns []Node
	if err := c.do(ctx, http.MethodGet, "/v1/nodes", nil, &ns); err != nil {
		return nil, err
	}
	return ns, nil
}

// GetNode returns the node with the given ID or name; "self" (or "") is
// the node that answers.
func (c *Client) GetNode(ctx context.Context, id string) (*Node, error) {
	if id == "" {
		id = "self"
	}
	n := new(Node)
	if err := c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(id), nil, n); err != nil {
		return nil, err
	}
	return n, nil
}
