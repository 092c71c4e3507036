package config

import (
	"errors"
	"strings"
	"testing"
)

func TestClusterOptions(t *testing.T) {
	good := "node:\n  name: n1\n  labels: {zone: a, rack: r1}\netcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n" +
		"  initial_cluster: [n1=http://10.0.0.1:2380, n2=http://10.0.0.2:2380, n3=http://10.0.0.3:2380]\n"
	c, err := load(good, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "n1" || c.Node.Labels["rack"] != "r1" || len(c.Etcd.InitialCluster) != 3 {
		t.Errorf("loaded %+v %+v", c.Node, c.Etcd)
	}
	d := c.Clone()
	d.Node.Labels["zone"] = "b"
	if c.Node.Labels["zone"] != "a" {
		t.Error("Clone shares node.labels")
	}
	c, err = load("", mapFlags{"node-name": "n4", "label": []string{"zone=b", "rack=r2"}, "join": "10.0.0.1:2379",
		"etcd-listen-peer-urls": []string{"http://10.0.0.4:2380"}})
	if err != nil || c.Etcd.Join != "10.0.0.1:2379" || c.Node.Labels["zone"] != "b" || c.Node.Labels["rack"] != "r2" {
		t.Fatalf("flags: %+v %+v %v", c.Node, c.Etcd, err)
	}
	if _, err := load("", mapFlags{"label": []string{"novalue"}}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "KEY=VALUE") {
		t.Errorf("--label novalue: %v", err)
	}

	for _, tc := range []struct{ name, in, want string }{
		{"no node name", "etcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n  join: 10.0.0.2:2379\n", "node.name: is empty"},
		{"no peer urls", "node: {name: n1}\netcd:\n  join: 10.0.0.2:2379\n", "etcd.listen_peer_urls: is empty"},
		{"wildcard peer", "node: {name: n1}\netcd:\n  listen_peer_urls: [http://0.0.0.0:2380]\n  join: 10.0.0.2:2379\n", "is a wildcard"},
		{"self missing", "node: {name: n9}\netcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n  initial_cluster: [n1=http://10.0.0.1:2380]\n", "does not list this node"},
		{"peer mismatch", "node: {name: n1}\netcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n  initial_cluster: [n1=http://10.0.0.1:2390]\n", "make them the same"},
		{"bad member", "node: {name: n1}\netcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n  initial_cluster: [n1]\n", "NAME=http://HOST:PORT"},
		{"even count", "node: {name: n1}\netcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n  initial_cluster: [n1=http://10.0.0.1:2380, n2=http://10.0.0.2:2380]\n", "use 3 or 5"},
		{"join and initial", "node: {name: n1}\netcd:\n  listen_peer_urls: [http://10.0.0.1:2380]\n  initial_cluster: [n1=http://10.0.0.1:2380]\n  join: 10.0.0.2:2379\n", "etcd.join: is set with etcd.initial_cluster"},
		{"with endpoints", "node: {name: n1}\netcd:\n  endpoints: [http://10.0.0.9:2379]\n  join: 10.0.0.2:2379\n", "which are for embedded members"},
		{"bad name", "node: {name: 'a b'}\n", `node.name: "a b"`},
		{"bad label key", "node: {labels: {'-x': y}}\n", `key "-x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(tc.in, nil)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
