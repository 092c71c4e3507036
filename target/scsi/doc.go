// Package scsi emulates the SPC-4/SBC-3 direct-access logical unit that
// every Stave volume presents, over a BlockDevice, and the SCSI target
// device (Target: the LUN map, REPORT LUNS) that a transport drives
// through the Device interface.
//
// # Command processing (one task, in order)
//
//  1. Target.Execute routes the task to the LU addressed by Task.LUN; an
//     absent LUN answers INQUIRY (peripheral qualifier 011b), REPORT LUNS
//     and REQUEST SENSE, and fails everything else with LOGICAL UNIT NOT
//     SUPPORTED.
//  2. The LU enters the task into its task set (SAM-5 §8.6): SIMPLE tasks
//     run concurrently, an ORDERED task waits for every older task and
//     holds back every newer one, HEAD OF QUEUE runs at once.
//  3. The opcode (and service action) selects a command from a table that
//     also drives REPORT SUPPORTED OPERATION CODES. The CDB must be as long
//     as the opcode's group requires.
//  4. A pending unit attention for the I_T nexus ends the task (except
//     INQUIRY, REPORT LUNS, REQUEST SENSE; SAM-5 §5.14).
//  5. The ALUA state of the target port group may refuse the command
//     (NOT READY, SPC-4 §5.11.2.4).
//  6. The persistent/SPC-2 reservation rules may refuse it (RESERVATION
//     CONFLICT, SPC-4 §5.13.1), decided by package pr.
//  7. The handler runs with a context that task management cancels.
//  8. One function (senseResult) turns the handler's error into status and
//     sense data, fixed (0x70) or descriptor (0x72) format per the D_SENSE
//     bit of the control mode page.
//
// # Sense data layouts (SPC-4 §4.5)
//
// Fixed format, 18 bytes:
//
//	0: VALID(7) | 0x70    1: obsolete    2: SENSE KEY(3-0)
//	3-6: INFORMATION      7: ADDITIONAL SENSE LENGTH (10)
//	8-11: COMMAND-SPECIFIC INFORMATION   12: ASC   13: ASCQ   14: FRU
//	15-17: SKSV(7) C/D(6) BPV(3) BIT POINTER(2-0), FIELD POINTER (16 bits)
//
// Descriptor format, 8 bytes plus descriptors:
//
//	0: 0x72   1: SENSE KEY   2: ASC   3: ASCQ   7: ADDITIONAL SENSE LENGTH
//	information descriptor: 00 0a 80 00 <INFORMATION, 8 bytes>
//	sense key specific:     02 06 00 00 <SKSV..., 3 bytes> 00
//
// # Concurrency
//
// LU and Target are safe for concurrent use. Reads use pooled buffers
// handed to the transport through Result.Data and returned by
// Result.Release. Writes, WRITE SAME, UNMAP, ORWRITE and COMPARE AND WRITE
// hold a per-LU range lock on the blocks they touch, which makes COMPARE
// AND WRITE atomic against every other write.
//
// # Decisions where the standards leave room (checked with libiscsi 1.19)
//
//   - Unit attentions: a nexus first seen after start-up gets no POWER ON
//     unit attention (like LIO; libiscsi logs in new sessions and expects
//     GOOD at once). LOGICAL UNIT RESET raises BUS DEVICE RESET FUNCTION
//     OCCURRED for every known nexus including the issuer (SAM-5 §7.7);
//     target resets raise 29/00 (warm) or 29/01 (cold); NexusLost forgets
//     a nexus's pending unit attentions.
//   - Write Data-Out shorter than the CDB asks (Expected Data Transfer
//     Length too small): the bytes that arrived are written, a trailing
//     partial block merged into the old one; the rest of the range is left
//     alone (FCP-4 §9.4.2 option a). Longer Data-Out is ignored beyond the
//     CDB's length. WRITE SAME needs exactly one block; COMPARE AND WRITE
//     exactly 2 x NUMBER OF LOGICAL BLOCKS, else INVALID FIELD IN CDB.
//   - WRITE SAME with UNMAP=1 deallocates whatever the Data-Out holds
//     (LBPRZ=1), as LIO and tgt do.
//   - Target.DataOutLength tells the transport each CDB's Data-Out length
//     for write residuals (target/iscsi's optional DataOutLengther).
//
// Not supported: ACA (NormACA=0; the NACA bit and the ACA task attribute
// are refused), protection information, EXTENDED COPY, WRITE ATOMIC,
// SANITIZE, saved mode pages.
package scsi
