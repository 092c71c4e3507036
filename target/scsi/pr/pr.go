// Package pr holds the pure rules of SCSI reservations for one logical
// unit: persistent reservations (SPC-4 §5.13, PERSISTENT RESERVE IN/OUT
// §6.13-§6.14) and SPC-2 RESERVE/RELEASE(6/10), with persistence through a
// Store (the "ReservationStore" of the design).
//
// A Manager is fed commands by package scsi; it decides, updates its state,
// persists it through the Store and returns the data, sense errors and
// side effects (unit attentions, nexuses whose tasks must be aborted) for
// the caller to carry out. It does no other I/O and keeps no clock.
//
// Use by package scsi, per command on I_T nexus p (a Port built from the
// scsi.Nexus):
//
//  1. CheckAccess(p, cdb) before executing any command addressed to the
//     LU; a non-nil error ends the task with RESERVATION CONFLICT.
//  2. PERSISTENT RESERVE IN: In(ctx, p, cdb), then truncate the data to
//     the ALLOCATION LENGTH.
//  3. PERSISTENT RESERVE OUT: Out(ctx, p, cdb, dataOut); on success,
//     establish Effects.UnitAttentions (each UnitAttention.Port may cover
//     several nexuses, see Port.Covers) and abort the tasks of
//     Effects.AbortInitiatorPorts (PREEMPT AND ABORT), then return GOOD.
//  4. RESERVE(6/10) and RELEASE(6/10): Reserve(p, cdb), Release(p, cdb).
//  5. Nexus loss: NexusLost(p); LOGICAL UNIT RESET and target resets:
//     Reset().
//  6. In a cluster, where every node exports the logical unit and its
//     Manager shares one state through a SharedStore: Refresh(ctx) on
//     every change of the saved state and before serving as the new
//     owner, then establish Effects.UnitAttentions as for Out.
//
// Ordering for PERSISTENT RESERVE OUT ("persist, then ack"):
//
//  1. The new state is computed on a copy of the current state.
//  2. When it differs, the copy is saved through Store.Save.
//  3. Only when Save succeeds does the copy become the current state and
//     the command report success and its Effects.
//  4. When Save fails with ErrConflict (another node wrote the shared
//     state first), the state is reloaded and the command decided again
//     from step 1, a bounded number of times.
//  5. When Save fails otherwise the state is unchanged and the command
//     ends with HARDWARE ERROR / INTERNAL TARGET FAILURE.
//
// The SPC-2 reservation is local to one Manager (one node): it is never
// saved, and Refresh keeps it.
//
// PERSISTENT RESERVE OUT parameter list (SPC-4 §6.14.3), 24 bytes plus,
// with SPEC_I_PT, a list of TransportIDs:
//
//	 0       8       16      20   21      22      24
//	+-------+-------+-------+----+-------+-------+--------------------+
//	|  KEY  | SAKEY | (obs) |bits|  res  | (obs) | TransportID len +  |
//	|       |       |       |    |       |       | TransportIDs (opt) |
//	+-------+-------+-------+----+-------+-------+--------------------+
//	byte 20 bits: SPEC_I_PT (3), ALL_TG_PT (2), APTPL (0)
//
// REGISTER AND MOVE uses its own layout (SPC-4 §6.14.4): KEY, SAKEY,
// reserved, UNREG (byte 17 bit 1), APTPL (bit 0), RELATIVE TARGET PORT
// IDENTIFIER (bytes 18-19), TRANSPORTID PARAMETER DATA LENGTH (20-23),
// one TransportID.
//
// PERSISTENT RESERVE IN data (SPC-4 §6.13): READ KEYS is PRGENERATION
// (4), ADDITIONAL LENGTH (4), 8-byte keys; READ RESERVATION adds one
// 16-byte descriptor (key, 4 obsolete, reserved, SCOPE|TYPE, 2 obsolete);
// REPORT CAPABILITIES is 8 bytes; READ FULL STATUS has one descriptor per
// registration:
//
//	 0      8      12        13          14     18    20        24
//	+------+------+---------+-----------+------+-----+---------+-------------+
//	| KEY  | res  |ATP|R_HLD|SCOPE|TYPE | res  | RTPI| TID len | TransportID |
//	+------+------+---------+-----------+------+-----+---------+-------------+
//
// iSCSI TransportID (SPC-4 §7.6.4.6): byte 0 FORMAT CODE (bits 7-6: 00
// name only, 01 name + ",i,0x" + ISID) | PROTOCOL IDENTIFIER 5, bytes 2-3
// ADDITIONAL LENGTH (a multiple of 4), then the NUL-terminated, padded
// iSCSI name (with the separator and ISID for format 01).
package pr
