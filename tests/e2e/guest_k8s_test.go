package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The Kubernetes test's CHAP credentials: mutual CHAP on the volume and
// discovery CHAP on the daemon, so every key of the Secret is used.
const (
	k8sVolume       = "k8s"
	k8sNodeUser     = "k8s-node"
	k8sNodeSecret   = "k8s-initiator-0123"
	k8sTargetUser   = "k8s-target"
	k8sTargetSecret = "k8s-target-456789"
	k8sDiscUser     = "k8s-discovery"
	k8sDiscSecret   = "k8s-discovery-42xy"
)

// k8sPV is the part of `stave k8s pv`'s PersistentVolume the kubelet's
// iSCSI plugin reads (k8s.io/api/core/v1 ISCSIPersistentVolumeSource).
type k8sPV struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Capacity map[string]string `yaml:"capacity"`
		ISCSI    struct {
			TargetPortal      string   `yaml:"targetPortal"`
			Portals           []string `yaml:"portals"`
			IQN               string   `yaml:"iqn"`
			LUN               int      `yaml:"lun"`
			FSType            string   `yaml:"fsType"`
			ReadOnly          bool     `yaml:"readOnly"`
			ChapAuthDiscovery bool     `yaml:"chapAuthDiscovery"`
			ChapAuthSession   bool     `yaml:"chapAuthSession"`
			SecretRef         *struct {
				Name      string `yaml:"name"`
				Namespace string `yaml:"namespace"`
			} `yaml:"secretRef"`
		} `yaml:"iscsi"`
	} `yaml:"spec"`
}

// k8sSecret is `stave k8s secret`'s Secret.
type k8sSecret struct {
	Kind     string `yaml:"kind"`
	Type     string `yaml:"type"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
}

// k8sGuestSteps returns the STAVE-STEP names guest_k8s.sh prints for a PV
// with portals portals, in order.
func k8sGuestSteps(portals int, chapDiscovery, chapSession bool) []string {
	var s []string
	if chapDiscovery {
		s = append(s, "discovery-needs-chap")
	}
	s = append(s, "iface-show", "iface-tcp")
	for i := 1; i <= portals; i++ {
		p := "-p" + strconv.Itoa(i)
		if chapDiscovery {
			s = append(s, "disc-auth"+p)
		}
		s = append(s, "discover"+p, "discover-lists"+p, "scan-manual"+p)
		if chapSession {
			s = append(s, "node-auth"+p)
		}
		s = append(s, "login"+p, "startup-manual"+p, "no-auto-scan"+p, "scsi-host"+p, "lun-scan"+p, "device"+p)
	}
	s = append(s, "host-sees-sessions", "blkid-unformatted", "mkfs", "mount", "write-file", "umount",
		"blkid-formatted", "remount", "read-file", "umount-again")
	for i := 1; i <= portals; i++ {
		p := "-p" + strconv.Itoa(i)
		s = append(s, "flush"+p, "delete-device"+p, "logout"+p, "delete-node"+p)
	}
	return append(s, "no-session-left", "host-sees-no-session")
}

// TestGuestKubernetesISCSI replays what the kubelet's in-tree iSCSI plugin
// does for a PersistentVolume (discovery on each portal with discovery
// CHAP, node.session.scan=manual, session CHAP, login, node.startup=manual,
// a LUN scan of one SCSI host, waiting for the by-path device, blkid, mkfs,
// mount; detach: delete the devices, log out, delete the node records)
// inside the QEMU guest, with exactly the values `stave k8s pv` and `stave
// k8s secret` print for a volume with mutual CHAP on a daemon with two
// portals and discovery CHAP.
func TestGuestKubernetesISCSI(t *testing.T) {
	requireE2E(t)
	qemu := requireTool(t, "qemu-system-x86_64")
	img := buildGuest(t)

	p2 := freePort(t)
	d := startDaemon(t, "--discovery-chap", k8sDiscUser+":"+k8sDiscSecret,
		"--portal", fmt.Sprintf("127.0.0.1:%d", p2), "--advertise", fmt.Sprintf("%s:%d", guestHostAlias, p2))
	d.MustCLI("volume", "create", k8sVolume, "--size", "64MiB",
		"--chap", k8sNodeUser+":"+k8sNodeSecret, "--mutual-chap", k8sTargetUser+":"+k8sTargetSecret)

	pvYAML := d.MustCLI("k8s", "pv", k8sVolume, "--fs", "ext4")
	secretYAML := d.MustCLI("k8s", "secret", k8sVolume)
	saveLog(t, "pv.yaml", pvYAML)
	var pv k8sPV
	if err := yaml.Unmarshal([]byte(pvYAML), &pv); err != nil {
		t.Fatalf("stave k8s pv printed no YAML: %v\n%s", err, pvYAML)
	}
	var sec k8sSecret
	if err := yaml.Unmarshal([]byte(secretYAML), &sec); err != nil {
		t.Fatalf("stave k8s secret printed no YAML: %v\n%s", err, secretYAML)
	}
	src := pv.Spec.ISCSI
	wantPortals := []string{fmt.Sprintf("%s:%d", guestHostAlias, d.Port()), fmt.Sprintf("%s:%d", guestHostAlias, p2)}
	if pv.Kind != "PersistentVolume" || src.TargetPortal != wantPortals[0] || strings.Join(src.Portals, ",") != wantPortals[1] ||
		src.IQN != staveIQN(k8sVolume) || src.LUN != 0 || src.FSType != "ext4" || src.ReadOnly ||
		!src.ChapAuthDiscovery || !src.ChapAuthSession || src.SecretRef == nil || pv.Spec.Capacity["storage"] != "64Mi" {
		t.Fatalf("stave k8s pv:\n%s", pvYAML)
	}
	if sec.Kind != "Secret" || sec.Type != "kubernetes.io/iscsi-chap" || sec.Metadata.Name != src.SecretRef.Name ||
		sec.Metadata.Namespace != src.SecretRef.Namespace || len(sec.Data) != 6 {
		t.Fatalf("stave k8s secret does not match the PV's secretRef or lacks keys:\n%s", secretYAML)
	}

	sessionsOf := func(want int) func() error {
		return func() error {
			out, err := d.CLI("session", "list")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			got := map[string]bool{}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 5 && f[4] == src.IQN && f[0] == guestInitiatorIQN {
					got[f[5]] = true // portal
				}
			}
			if len(got) != want {
				return fmt.Errorf("%d sessions of %s with %s on distinct portals, want %d: %s", len(got), guestInitiatorIQN, src.IQN, want, out)
			}
			return nil
		}
	}
	portals := append([]string{src.TargetPortal}, src.Portals...)
	ctl := startGuestControl(t, map[string]func() error{
		fmt.Sprintf("sessions %d", len(portals)): sessionsOf(len(portals)),
		"sessions 0":                             sessionsOf(0),
	})

	vars := map[string]string{
		"TARGET_PORTAL":  src.TargetPortal,
		"PORTALS":        strings.Join(src.Portals, " "),
		"IQN":            src.IQN,
		"LUN":            strconv.Itoa(src.LUN),
		"FSTYPE":         src.FSType,
		"CHAP_DISCOVERY": strconv.FormatBool(src.ChapAuthDiscovery),
		"CHAP_SESSION":   strconv.FormatBool(src.ChapAuthSession),
		"CTL_PORT":       strconv.Itoa(ctl.Port()),
	}
	for k, v := range sec.Data {
		// Base64 as in the manifest: shell-safe; the guest decodes it.
		vars["SECRET_"+strings.ReplaceAll(k, ".", "_")] = v
	}
	run, elapsed := runGuestScript(t, qemu, img, "guest_k8s.sh", vars)
	t.Logf("guest run: %v, ready after %.1fs of guest uptime, %d steps reported\n%s",
		elapsed.Round(time.Second), run.readyAt, len(run.steps), guestStepSummary(run, nil))
	if !run.ready {
		t.Errorf("guest never reported STAVE-GUEST ready (boot or image problem)")
	}
	if !run.done {
		t.Errorf("guest never reported STAVE-GUEST done (hung or crashed)")
	}
	if run.scriptRC != 0 {
		t.Errorf("guest script exit status %d", run.scriptRC)
	}
	for _, s := range checkGuestSteps(run, k8sGuestSteps(len(portals), src.ChapAuthDiscovery, src.ChapAuthSession), nil) {
		t.Errorf("%s", s)
	}
	if out := d.MustCLI("session", "list"); strings.Contains(out, src.IQN) {
		t.Errorf("sessions left after the detach:\n%s", out)
	}
}
