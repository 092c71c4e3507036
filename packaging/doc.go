// Package packaging holds no code: its directory holds the systemd unit,
// the default /etc/stave/stave.yaml, the nfpm (.deb) configuration and
// maintainer scripts, the Containerfile and the Kubernetes manifests.
// Its tests check them against each other and against internal/config:
// `systemd-analyze verify` of the unit (when installed), every YAML file
// parses, every configuration embedded in them loads and validates, and
// every path the unit expects is where the package installs it.
// docs/packaging.md says how to build and check the .deb.
package packaging
