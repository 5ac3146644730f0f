// Package compare holds the comparisons of pgresilient with drivers it does
// not depend on (lib/pq), in a module of its own, so that the driver's users
// never download them.
package compare
