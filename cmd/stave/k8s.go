package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"

	"stave.dev/stave/internal/adminapi"
)

// Kubernetes manifests of `stave k8s pv` and `stave k8s secret`: the
// in-tree `iscsi` volume source (k8s.io/api/core/v1
// ISCSIPersistentVolumeSource) and the `kubernetes.io/iscsi-chap` Secret
// whose keys the kubelet's iSCSI plugin copies into open-iscsi's node and
// discovery records. Only the fields Stave sets are modelled, in the order
// kubectl prints them, so the output is stable (golden tests).

// k8sChapSecretType is the Secret type the in-tree iSCSI plugin reads.
const k8sChapSecretType = "kubernetes.io/iscsi-chap"

// k8sMeta is ObjectMeta.
type k8sMeta struct {
	Name      string            `yaml:"name" json:"name"`
	Namespace string            `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Labels    map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// k8sSecretRef is SecretReference.
type k8sSecretRef struct {
	Name      string `yaml:"name" json:"name"`
	Namespace string `yaml:"namespace" json:"namespace"`
}

// k8sISCSI is ISCSIPersistentVolumeSource.
type k8sISCSI struct {
	TargetPortal      string        `yaml:"targetPortal" json:"targetPortal"`
	Portals           []string      `yaml:"portals,omitempty" json:"portals,omitempty"`
	IQN               string        `yaml:"iqn" json:"iqn"`
	LUN               int           `yaml:"lun" json:"lun"`
	FSType            string        `yaml:"fsType" json:"fsType"`
	ReadOnly          bool          `yaml:"readOnly" json:"readOnly"`
	ChapAuthDiscovery bool          `yaml:"chapAuthDiscovery,omitempty" json:"chapAuthDiscovery,omitempty"`
	ChapAuthSession   bool          `yaml:"chapAuthSession,omitempty" json:"chapAuthSession,omitempty"`
	SecretRef         *k8sSecretRef `yaml:"secretRef,omitempty" json:"secretRef,omitempty"`
}

// k8sPVSpec is PersistentVolumeSpec.
type k8sPVSpec struct {
	Capacity                      map[string]string `yaml:"capacity" json:"capacity"`
	AccessModes                   []string          `yaml:"accessModes" json:"accessModes"`
	PersistentVolumeReclaimPolicy string            `yaml:"persistentVolumeReclaimPolicy" json:"persistentVolumeReclaimPolicy"`
	VolumeMode                    string            `yaml:"volumeMode" json:"volumeMode"`
	ISCSI                         k8sISCSI          `yaml:"iscsi" json:"iscsi"`
}

// k8sPV is a PersistentVolume.
type k8sPV struct {
	APIVersion string    `yaml:"apiVersion" json:"apiVersion"`
	Kind       string    `yaml:"kind" json:"kind"`
	Metadata   k8sMeta   `yaml:"metadata" json:"metadata"`
	Spec       k8sPVSpec `yaml:"spec" json:"spec"`
}

// k8sSecret is a Secret; Data values are base64.
type k8sSecret struct {
	APIVersion string            `yaml:"apiVersion" json:"apiVersion"`
	Kind       string            `yaml:"kind" json:"kind"`
	Metadata   k8sMeta           `yaml:"metadata" json:"metadata"`
	Type       string            `yaml:"type" json:"type"`
	Data       map[string]string `yaml:"data" json:"data"`
}

// pvOptions are the flags of `stave k8s pv`.
type pvOptions struct {
	name            string // PV name; "" = stave-VOLUME
	fsType          string
	capacity        int64 // 0 = the volume's size
	secretName      string
	secretNamespace string
}

var (
	// RFC 1123 DNS subdomain (object names) and label (namespaces).
	dnsSubdomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)
	dnsLabelRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	fsTypeRE       = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
)

// k8sLabels marks the objects as Stave's and names the volume.
func k8sLabels(volume string) map[string]string {
	return map[string]string{"app.kubernetes.io/managed-by": "stave", "stave.dev/volume": volume}
}

// defaultPVName and defaultSecretName are the names used without --name.
func defaultPVName(volume string) string     { return "stave-" + volume }
func defaultSecretName(volume string) string { return "stave-" + volume + "-chap" }

// checkObjectName checks a Kubernetes object name given by flag.
func checkObjectName(flag, name string) error {
	if !dnsSubdomainRE.MatchString(name) {
		return fmt.Errorf("--%s %q is not a Kubernetes object name: use at most 253 characters from a-z, 0-9, '-' and '.', "+
			"starting and ending with a letter or digit", flag, name)
	}
	return nil
}

// checkNamespace checks a namespace given by --namespace.
func checkNamespace(ns string) error {
	if !dnsLabelRE.MatchString(ns) {
		return fmt.Errorf("--namespace %q is not a Kubernetes namespace: use at most 63 characters from a-z, 0-9 and '-', "+
			"starting and ending with a letter or digit", ns)
	}
	return nil
}

// k8sQuantity renders bytes as a Kubernetes quantity: the largest binary
// suffix (Ki … Ei) that divides it exactly, else plain bytes.
func k8sQuantity(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"Ei", 60}, {"Pi", 50}, {"Ti", 40}, {"Gi", 30}, {"Mi", 20}, {"Ki", 10}} {
		if n > 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// buildPV returns the PersistentVolume of a volume reached through cn.
// The first portal is the targetPortal; the others (every other
// advertised portal of every node that serves the volume) go in portals.
func buildPV(cn *adminapi.Connection, o pvOptions) (*k8sPV, error) {
	if len(cn.Portals) == 0 {
		return nil, fmt.Errorf("the daemon advertises no portal for volume %s that initiators can be told "+
			"(its portals listen on a wildcard address): give each portal an advertise address (portals[].advertise, --advertise) and restart it", cn.Volume)
	}
	name := o.name
	if name == "" {
		name = defaultPVName(cn.Volume)
		if err := checkObjectName("name", name); err != nil {
			return nil, fmt.Errorf("the default PV name %q is not a Kubernetes object name: give --name", name)
		}
	} else if err := checkObjectName("name", name); err != nil {
		return nil, err
	}
	if !fsTypeRE.MatchString(o.fsType) {
		return nil, fmt.Errorf("--fs %q: give a file system type the node's mkfs knows, e.g. ext4 or xfs", o.fsType)
	}
	capacity := cn.Size
	if o.capacity != 0 {
		if o.capacity < 0 || o.capacity > cn.Size {
			return nil, fmt.Errorf("--capacity %s is more than volume %s holds (%s): a PV must not promise more than its disk; "+
				"grow the volume first", formatSize(o.capacity), cn.Volume, formatSize(cn.Size))
		}
		capacity = o.capacity
	}
	src := k8sISCSI{TargetPortal: cn.Portals[0], Portals: cn.Portals[1:], IQN: cn.Target, LUN: cn.LUN, FSType: o.fsType}
	if len(src.Portals) == 0 {
		src.Portals = nil
	}
	if cn.CHAP != nil || cn.DiscoveryCHAP != nil {
		src.ChapAuthSession = cn.CHAP != nil
		src.ChapAuthDiscovery = cn.DiscoveryCHAP != nil
		sn, ns := o.secretName, o.secretNamespace
		if sn == "" {
			sn = defaultSecretName(cn.Volume)
		}
		if err := checkObjectName("secret-name", sn); err != nil {
			return nil, err
		}
		if err := checkNamespace(ns); err != nil {
			return nil, err
		}
		src.SecretRef = &k8sSecretRef{Name: sn, Namespace: ns}
	}
	return &k8sPV{
		APIVersion: "v1", Kind: "PersistentVolume",
		Metadata: k8sMeta{Name: name, Labels: k8sLabels(cn.Volume)},
		Spec: k8sPVSpec{
			Capacity:                      map[string]string{"storage": k8sQuantity(capacity)},
			AccessModes:                   []string{"ReadWriteOnce"},
			PersistentVolumeReclaimPolicy: "Retain",
			VolumeMode:                    "Filesystem",
			ISCSI:                         src,
		},
	}, nil
}

// buildSecret returns the CHAP Secret of a volume reached through cn: the
// session keys (with the _in keys of mutual CHAP) and, when the node
// requires discovery CHAP, the discovery.sendtargets keys.
func buildSecret(cn *adminapi.Connection, name, namespace string) (*k8sSecret, error) {
	if cn.CHAP == nil && cn.DiscoveryCHAP == nil {
		return nil, fmt.Errorf("volume %s has no CHAP and discovery needs none: its PV needs no Secret "+
			"(create the volume with --chap USER:SECRET to require CHAP)", cn.Volume)
	}
	if name == "" {
		name = defaultSecretName(cn.Volume)
	}
	if err := checkObjectName("name", name); err != nil {
		return nil, err
	}
	if err := checkNamespace(namespace); err != nil {
		return nil, err
	}
	data := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			data[k] = base64.StdEncoding.EncodeToString([]byte(v))
		}
	}
	if c := cn.CHAP; c != nil {
		put("node.session.auth.username", c.User)
		put("node.session.auth.password", c.Secret)
		put("node.session.auth.username_in", c.MutualUser)
		put("node.session.auth.password_in", c.MutualSecret)
	}
	if d := cn.DiscoveryCHAP; d != nil {
		put("discovery.sendtargets.auth.username", d.User)
		put("discovery.sendtargets.auth.password", d.Secret)
	}
	return &k8sSecret{
		APIVersion: "v1", Kind: "Secret",
		Metadata: k8sMeta{Name: name, Namespace: namespace, Labels: k8sLabels(cn.Volume)},
		Type:     k8sChapSecretType,
		Data:     data,
	}, nil
}

// writeManifest prints v as YAML (--output table, the default) or JSON.
func writeManifest(w io.Writer, o string, v any) error {
	if o == "json" {
		return writeJSON(w, v)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return enc.Close()
}

func k8sCommand() *cli.Command {
	volumeComplete := func(c *cli.Context) {
		if c.NArg() > 0 {
			return
		}
		cl, err := client(c)
		if err != nil {
			return
		}
		defer cl.Close()
		ctx, cancel := callCtx(c)
		defer cancel()
		if vs, err := cl.ListVolumes(ctx); err == nil {
			for _, v := range vs {
				fmt.Fprintln(c.App.Writer, v.Name)
			}
		}
	}
	return &cli.Command{
		Name:  "k8s",
		Usage: "print Kubernetes manifests for a volume (in-tree iscsi volume source)",
		Description: "The manifests go to standard output as YAML (JSON with --output json), for `kubectl apply -f -`.\n" +
			"They use the portals the daemon advertises (--advertise) and need an authorised API: the\n" +
			"unix socket, or http.listen with a token or client certificate (the Secret holds CHAP secrets).",
		Subcommands: []*cli.Command{
			{
				Name:      "pv",
				Usage:     "print a PersistentVolume for VOLUME (iscsi source: targetPortal, portals, iqn, lun 0, CHAP)",
				ArgsUsage: "VOLUME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "fs", Value: "ext4", Usage: "`TYPE` of the file system the kubelet makes and mounts (fsType)"},
					&cli.StringFlag{Name: "name", Usage: "PersistentVolume `NAME` (default stave-VOLUME)"},
					&cli.StringFlag{Name: "capacity", Usage: "`SIZE` the PV offers, at most the volume's (default: the volume's size)"},
					&cli.StringFlag{Name: "secret-name", Usage: "`NAME` of the CHAP Secret (default stave-VOLUME-chap; see `stave k8s secret`)"},
					&cli.StringFlag{Name: "namespace", Value: "default", Usage: "`NAMESPACE` of the CHAP Secret"},
				},
				BashComplete: volumeComplete,
				Action:       k8sPVAction,
			},
			{
				Name:      "secret",
				Usage:     "print the kubernetes.io/iscsi-chap Secret holding VOLUME's CHAP (and discovery CHAP) credentials",
				ArgsUsage: "VOLUME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "Secret `NAME` (default stave-VOLUME-chap)"},
					&cli.StringFlag{Name: "namespace", Value: "default", Usage: "`NAMESPACE` of the Secret (the PV's secretRef names it)"},
				},
				BashComplete: volumeComplete,
				Action:       k8sSecretAction,
			},
		},
	}
}

func k8sPVAction(c *cli.Context) error {
	vol, err := oneArg(c, "VOLUME")
	if err != nil {
		return err
	}
	opts := pvOptions{name: c.String("name"), fsType: c.String("fs"), secretName: c.String("secret-name"),
		secretNamespace: c.String("namespace")}
	if s := c.String("capacity"); s != "" {
		if opts.capacity, err = parseSize(s); err != nil {
			return fmt.Errorf("--capacity: %w", err)
		}
		if opts.capacity == 0 {
			return errors.New("--capacity 0: give a positive size such as 10GiB, or leave it out for the volume's size")
		}
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		cn, err := cl.Connection(ctx, vol)
		if err != nil {
			return err
		}
		pv, err := buildPV(cn, opts)
		if err != nil {
			return err
		}
		return writeManifest(c.App.Writer, o, pv)
	})
}

func k8sSecretAction(c *cli.Context) error {
	vol, err := oneArg(c, "VOLUME")
	if err != nil {
		return err
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		cn, err := cl.Connection(ctx, vol)
		if err != nil {
			return err
		}
		s, err := buildSecret(cn, c.String("name"), c.String("namespace"))
		if err != nil {
			return err
		}
		return writeManifest(c.App.Writer, o, s)
	})
}

// bashCompletion is the bash script that completes stave's commands and
// flags through urfave/cli's --generate-bash-completion.
const bashCompletion = `# bash completion for stave: eval "$(stave completion bash)", or save it as
# /etc/bash_completion.d/stave
_stave_complete() {
	local cur words
	cur="${COMP_WORDS[COMP_CWORD]}"
	if [[ "$cur" == "-"* ]]; then
		# A lone "--" would end the flags: ask with "-" instead.
		local arg=$cur
		[[ "$arg" == "--" ]] && arg="-"
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$arg" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
	return 0
}
complete -o bashdefault -o default -F _stave_complete stave
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script (bash)",
		ArgsUsage: "bash",
		Action: func(c *cli.Context) error {
			sh, err := oneArg(c, "shell (bash)")
			if err != nil {
				return err
			}
			if sh != "bash" {
				return fmt.Errorf("completion %q: only bash is supported (zsh: autoload bashcompinit && bashcompinit, then the bash script)", sh)
			}
			_, err = io.WriteString(c.App.Writer, bashCompletion)
			return err
		},
	}
}
