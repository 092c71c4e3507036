package pool

import "testing"

func TestErasureSelfTestGolden(t *testing.T) {
	want := map[[2]int]bool{{1, 1}: true, {2, 1}: true, {3, 1}: true, {2, 2}: true, {4, 2}: true}
	for km := range want {
		got, err := selfTestParity(km[0], km[1])
		if err != nil {
			t.Fatal(err)
		}
		g, ok := selfTestGolden[km]
		if !ok || g != got {
			t.Errorf("selfTestGolden[%v] = %#08x, computed %#08x", km, g, got)
		}
	}
	if err := erasureSelfTest(); err != nil {
		t.Fatal(err)
	}
}
