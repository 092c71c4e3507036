// Package iscsi is Stave's iSCSI target transport (RFC 7143): the PDU codec
// with CRC32C digests, portals and connections, sessions with the CmdSN
// window, the full feature phase (SCSI commands with immediate data,
// unsolicited Data-Out and R2T, Data-In with phase collapse, NOP, task
// management, text/SendTargets, logout, async messages) driving a
// scsi.Device. Login negotiation itself is the pure state machine in
// target/iscsi/login; this package feeds it PDUs and applies its results.
//
// Every PDU starts with a 48-byte Basic Header Segment (RFC 7143 §11.2):
//
//	Byte/     0       |       1       |       2       |       3       |
//	   +---------------+---------------+---------------+---------------+
//	  0|.|I| Opcode    |F|  Opcode-specific fields                     |
//	   +---------------+---------------+---------------+---------------+
//	  4|TotalAHSLength | DataSegmentLength                             |
//	   +---------------+---------------+---------------+---------------+
//	  8| LUN or Opcode-specific fields                                 |
//	   +                                                               +
//	 12|                                                               |
//	   +---------------+---------------+---------------+---------------+
//	 16| Initiator Task Tag                                            |
//	   +---------------+---------------+---------------+---------------+
//	 20/ Opcode-specific fields                                        /
//	 +/                                                               /
//	   +---------------+---------------+---------------+---------------+
//	 48| Additional Header Segments (TotalAHSLength*4 bytes)           |
//	   +---------------+---------------+---------------+---------------+
//	   | Header-Digest (CRC32C, optional)                              |
//	   +---------------+---------------+---------------+---------------+
//	   | Data Segment (DataSegmentLength bytes, padded to 4)           |
//	   +---------------+---------------+---------------+---------------+
//	   | Data-Digest (CRC32C over data and padding, optional)          |
//	   +---------------+---------------+---------------+---------------+
//
// Digests are CRC32C (Castagnoli) sent least significant byte first, as
// Linux and libiscsi do.
//
// A SCSI command goes through these steps, in this order:
//
//  1. The reader admits it through the session's CmdSN window (window.go):
//     dropped outside [ExpCmdSN, MaxCmdSN], held until an earlier gap
//     fills, or delivered; immediate commands bypass the window.
//  2. Write data is collected into a pooled buffer: immediate data, one
//     unsolicited burst (FirstBurstLength), then R2Ts of at most
//     MaxBurstLength, MaxOutstandingR2T at a time. DataSN, offset and
//     length errors end the task with ABORTED COMMAND, DATA PHASE ERROR.
//  3. Once delivered with all its data, the task runs scsi.Device.Execute
//     on a session worker goroutine (bounded by the window), or on the
//     reader itself when it is the only task of the session and no further
//     PDU has been read (queue depth 1: no goroutine handoff). An inline
//     task that runs longer than 500 µs is rescued: a new reader goroutine
//     takes over the connection, so PDUs sent meanwhile (an ABORT TASK for
//     it) are not held up, and the next 64 commands go to workers.
//  4. On completion the task leaves the session and frees its window slot,
//     then queues its Data-In PDUs (split by the initiator's
//     MaxRecvDataSegmentLength, F bit per MaxBurstLength) and its status,
//     collapsed into the last Data-In when there is no sense data.
//  5. The goroutine that writes assigns StatSN and the current
//     ExpCmdSN/MaxCmdSN in queue order, writes, and only then releases the
//     task's buffers. When no other task of the session runs, the
//     completing goroutine writes its response itself with one
//     non-blocking writev (Data-In and status together); otherwise, or
//     when the socket would block, the writer goroutine does, batching.
//
// A TMF response is queued after every task it affects has finished, and a
// Logout Response after the running tasks of its scope, so their status
// reaches the initiator first.
//
// Concurrency: each connection has one reader goroutine at a time (which
// owns the login machine, the Data-Out tracking and the text state) and
// one writer goroutine (which batches queued PDUs into one writev when
// several tasks complete at once or the socket is backed up, and sends
// target NOP-In pings). One goroutine at a time owns the socket's write
// side (conn.qmu.state). Commands of a session run
// concurrently, bounded by the CmdSN window (Config.Limits / QueueDepth).
package iscsi
