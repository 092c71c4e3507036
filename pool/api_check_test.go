package pool

import "stave.dev/stave/target/scsi"

var (
	_ scsi.BlockDevice        = (*Volume)(nil)
	_ scsi.ProvisioningStatus = (*Volume)(nil)
)
