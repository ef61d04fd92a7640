package dns

import (
	"context"
	"fmt"
	"time"

	miekg "github.com/miekg/dns"
)

// roundTrip sends m to addr over network ("udp" or "tcp") and waits for the
// reply until ctx ends. miekg's client only turns ctx's deadline into
// socket deadlines (capped at its 2 s default) and ignores cancellation, so
// the deadline is passed in full and the socket is closed on cancel: Close
// does not wait for exchanges in flight.
func roundTrip(ctx context.Context, network string, m *miekg.Msg, addr string) (*miekg.Msg, error) {
	c := &miekg.Client{Net: network, UDPSize: miekg.DefaultMsgSize}
	if deadline, ok := ctx.Deadline(); ok {
		c.Timeout = time.Until(deadline)
		if c.Timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	}
	conn, err := c.DialContext(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return resp, nil
}
