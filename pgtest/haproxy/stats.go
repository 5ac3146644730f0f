package haproxy

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"
)

// ServerStatus is a server as HAProxy's statistics ("show stat") report it.
type ServerStatus struct {
	Name string
	// Status is HAProxy's: "UP", "DOWN", "UP 1/2" (UP, one failed check
	// of the 2 that mark it DOWN), "DOWN 1/1" (DOWN, going UP), "MAINT",
	// "no check".
	Status string
	// Check is the last check's result: "L7OK" (passed), "L7STS" (wrong
	// HTTP status), "L4CON" (connection failed), "L4TOUT", "INI" (not
	// checked yet), ...; HAProxy's "* " prefix, a check running, is
	// removed.
	Check string
	// Routable reports whether HAProxy sends new connections to it: its
	// Status starts with "UP".
	Routable bool
}

// Servers returns every server as HAProxy's stats socket reports it now, in
// configuration order.
func (p *Proxy) Servers(ctx context.Context) ([]ServerStatus, error) {
	out, err := p.Command(ctx, "show stat")
	if err != nil {
		return nil, err
	}
	out = strings.TrimPrefix(out, "# ")
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(recs) == 0 {
		return nil, fmt.Errorf("pgtest/haproxy: show stat: %q: %v", out, err)
	}
	col := func(name string) int { return slices.Index(recs[0], name) }
	px, sv, status, check := col("pxname"), col("svname"), col("status"), col("check_status")
	if px < 0 || sv < 0 || status < 0 || check < 0 {
		return nil, fmt.Errorf("pgtest/haproxy: show stat: unexpected header %q", recs[0])
	}
	var list []ServerStatus
	for _, r := range recs[1:] {
		if len(r) != len(recs[0]) || r[px] != backendName || r[sv] == "FRONTEND" || r[sv] == "BACKEND" {
			continue
		}
		list = append(list, ServerStatus{
			Name:     r[sv],
			Status:   r[status],
			Check:    strings.TrimPrefix(r[check], "* "),
			Routable: strings.HasPrefix(r[status], "UP"),
		})
	}
	return list, nil
}

// Command runs one command on HAProxy's stats socket (admin level), such as
// "show servers state" or "disable server pg/node1", and returns its
// output. See HAProxy's management guide for the commands.
func (p *Proxy) Command(ctx context.Context, command string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", p.socket)
	if err != nil {
		return "", fmt.Errorf("pgtest/haproxy: stats socket: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, command+"\n"); err != nil {
		return "", fmt.Errorf("pgtest/haproxy: %s: %w", command, err)
	}
	b, err := io.ReadAll(conn) // one command, then HAProxy closes the connection
	if err != nil {
		return "", fmt.Errorf("pgtest/haproxy: %s: %w", command, err)
	}
	return string(b), nil
}
