// Package dropin holds a test of pgresilient used the way most applications
// will use it: a blank import and sql.Open, nothing else from the package.
package dropin
