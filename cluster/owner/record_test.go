package owner

import (
	"errors"
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"stave.dev/stave/cluster/ownership"
)

func TestDecodeRecord(t *testing.T) {
	kv := func(k, v string, lease int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(k), Value: []byte(v), Lease: lease, ModRevision: 7}
	}
	own := OwnershipKey("v")
	for _, tc := range []struct {
		name string
		kvs  []*mvccpb.KeyValue
		want ownership.Record
		err  error
	}{
		{"new", []*mvccpb.KeyValue{kv(own, encodeOwnership(0, []ownership.NodeID{"a", "b"}), 0)},
			ownership.Record{ISR: []ownership.NodeID{"a", "b"}, Rev: 9}, nil},
		{"owned", []*mvccpb.KeyValue{kv(OwnerKey("v"), encodeOwner("b", 3), 42), kv(own, `{"epoch":3,"isr":["b"]}`, 0),
			kv(OwnerKey("v")+"/other", `junk`, 0)},
			ownership.Record{Epoch: 3, Owner: "b", Lease: 42, ISR: []ownership.NodeID{"b"}, Rev: 9}, nil},
		{"missing", nil, ownership.Record{Rev: 9}, ErrNoRecord},
		{"corrupt ownership", []*mvccpb.KeyValue{kv(own, `{"epoch":"x"}`, 0)}, ownership.Record{Rev: 9}, ErrCorruptRecord},
		{"owner without node", []*mvccpb.KeyValue{kv(OwnerKey("v"), `{"epoch":1}`, 5), kv(own, `{"epoch":1}`, 0)},
			ownership.Record{Rev: 9}, ErrCorruptRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := decodeRecord("v", tc.kvs, 9)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err == nil && (got.Epoch != tc.want.Epoch || got.Owner != tc.want.Owner || got.Lease != tc.want.Lease ||
				got.Rev != tc.want.Rev || !slices.Equal(got.ISR, tc.want.ISR)) {
				t.Fatalf("record %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestWithISR(t *testing.T) {
	isr := []ownership.NodeID{"a", "b"}
	if got := withISR(isr, "c", true); !slices.Equal(got, []ownership.NodeID{"a", "b", "c"}) {
		t.Fatalf("add: %v", got)
	}
	if got := withISR(isr, "a", true); !slices.Equal(got, isr) {
		t.Fatalf("add of a member: %v", got)
	}
	if got := withISR(isr, "a", false); !slices.Equal(got, []ownership.NodeID{"b"}) || !slices.Equal(isr, []ownership.NodeID{"a", "b"}) {
		t.Fatalf("remove: %v (input now %v)", got, isr)
	}
}
