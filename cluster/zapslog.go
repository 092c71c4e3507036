package cluster

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// slogCore is a zapcore.Core that forwards etcd's zap log entries at or
// above min to an slog.Logger, so etcd logs through the daemon's handler.
type slogCore struct {
	log     *slog.Logger
	min     zapcore.Level
	fields  []zapcore.Field
	closing *atomic.Bool // set while the member stops: its complaints are expected
}

// benign are etcd warnings that say nothing to a Stave operator: a
// single embedded member runs gRPC and HTTP on one local port with
// simple tokens and no auth, and detects its storage version a moment
// after start. They are logged at Debug.
var benign = []string{
	"Running http and grpc server on single port",
	"simple token is not cryptographically signed",
	"Failed to detect schema version",
	"failed to update storage version",
}

// newZapLogger returns a zap logger that writes entries of level min and
// above to log.
func newZapLogger(log *slog.Logger, min zapcore.Level, closing *atomic.Bool) *zap.Logger {
	return zap.New(&slogCore{log: log, min: min, closing: closing})
}

// Enabled implements zapcore.LevelEnabler.
func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= c.min }

// With implements zapcore.Core.
func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	d := *c
	d.fields = append(append([]zapcore.Field(nil), c.fields...), fs...)
	return &d
}

// Check implements zapcore.Core.
func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// Write implements zapcore.Core.
func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	lv := slog.LevelInfo
	switch {
	case e.Level >= zapcore.ErrorLevel:
		lv = slog.LevelError
	case e.Level >= zapcore.WarnLevel:
		lv = slog.LevelWarn
	case e.Level < zapcore.InfoLevel:
		lv = slog.LevelDebug
	}
	if c.closing != nil && c.closing.Load() {
		lv = slog.LevelDebug
	}
	for _, b := range benign {
		if strings.Contains(e.Message, b) {
			lv = slog.LevelDebug
		}
	}
	if !c.log.Enabled(context.Background(), lv) {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("etcd_logger", e.LoggerName))
	}
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	c.log.LogAttrs(context.Background(), lv, "etcd: "+e.Message, attrs...)
	return nil
}

// Sync implements zapcore.Core.
func (c *slogCore) Sync() error { return nil }
