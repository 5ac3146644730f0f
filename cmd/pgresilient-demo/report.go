package main

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"os"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

var (
	colorOK    = color.NRGBA{R: 0x1a, G: 0x9a, B: 0x3a, A: 0xff}
	colorErr   = color.NRGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	colorFault = color.NRGBA{R: 0xff, G: 0xa0, B: 0x20, A: 0x60}
	colorFlash = color.NRGBA{R: 0xff, G: 0x80, B: 0x00, A: 0xff}
	colorPhase = color.NRGBA{R: 0x70, G: 0x70, B: 0x70, A: 0xff}
)

// writeReport writes the self-contained HTML report: the run's parameters, a
// timeline chart per pool (inline SVG) and the tables. Nothing in it refers
// to the network.
func writeReport(path string, d *demo, res *results) error {
	ymax := 1.0
	for _, p := range res.pools {
		for i := range p.okBuckets {
			ymax = max(ymax, float64(p.okBuckets[i]), float64(p.errBuckets[i]))
		}
	}
	ymax *= 1.2 // room for the phase labels
	var charts []chart
	for _, p := range res.pools {
		svg, err := timeline(d, p, ymax)
		if err != nil {
			return fmt.Errorf("chart of %s: %w", p.name, err)
		}
		charts = append(charts, chart{Pool: p.name, SVG: template.HTML(svg)})
	}
	var text bytes.Buffer
	printResults(&text, d, res)
	data := reportData{
		Generated: time.Now().UTC().Format(time.RFC3339),
		Intro:     d.introText(),
		Charts:    charts,
		Tables:    text.String(),
		Samples:   sampleRows(d, res),
	}
	var out bytes.Buffer
	if err := reportTmpl.Execute(&out, data); err != nil {
		return err
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}

type chart struct {
	Pool string
	SVG  template.HTML
}

type sampleRow struct {
	Phase, Pool, Kind, Message string
}

type reportData struct {
	Generated string
	Intro     string
	Charts    []chart
	Tables    string
	Samples   []sampleRow
}

// introText is what the demo printed before the run, for the report.
func (d *demo) introText() string {
	var b bytes.Buffer
	d.printIntro(&b)
	return strings.TrimSpace(b.String())
}

// sampleRows lists the first error message of each kind, per phase and pool.
func sampleRows(d *demo, res *results) []sampleRow {
	var rows []sampleRow
	for _, r := range d.runs {
		if !r.ran() {
			continue
		}
		for _, p := range res.pools {
			for k := kindLost; k < numKinds; k++ {
				if msg, ok := p.samples[sampleKey{uint8(r.idx), k}]; ok {
					rows = append(rows, sampleRow{r.def.name, p.name, k.String(), msg})
				}
			}
		}
	}
	return rows
}

// timeline draws one pool's acknowledged and failed transfers per bucket, the
// phases and the faults, as an SVG document without its XML prolog.
func timeline(d *demo, p poolResult, ymax float64) ([]byte, error) {
	pl := plot.New()
	title := "raw pgx stdlib"
	if p.name != "pgx" {
		title = p.name
	}
	pl.Title.Text = title + ": transfers per 100 ms (green: acknowledged, red: failed; orange: fault)"
	pl.X.Label.Text = "seconds since the workload started"
	pl.Y.Label.Text = "transfers per 100 ms"
	pl.X.Min, pl.X.Max = 0, float64(len(p.okBuckets))*bucket.Seconds()
	pl.Y.Min, pl.Y.Max = 0, ymax
	pl.Y.Tick.Marker = plot.TickerFunc(wholeTicks)
	pl.Add(plotter.NewGrid())

	var labels plotter.XYLabels
	for _, r := range d.runs {
		if !r.ran() {
			continue
		}
		if r.faultWindow() {
			x0, x1 := r.faultStart.Seconds(), r.faultEnd.Seconds()
			poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: 0}, {X: x1, Y: 0}, {X: x1, Y: ymax}, {X: x0, Y: ymax}})
			if err != nil {
				return nil, err
			}
			poly.Color = colorFault
			poly.LineStyle.Width = 0
			pl.Add(poly)
		} else if r.def.name != "baseline" {
			if err := vline(pl, r.faultStart.Seconds(), ymax, colorFlash, 2, nil); err != nil {
				return nil, err
			}
		}
		if err := vline(pl, r.start.Seconds(), ymax, colorPhase, 0.8, []vg.Length{vg.Points(3), vg.Points(3)}); err != nil {
			return nil, err
		}
		labels.XYs = append(labels.XYs, plotter.XY{X: r.start.Seconds() + 0.15, Y: ymax * 0.93})
		labels.Labels = append(labels.Labels, r.def.name)
	}
	for _, s := range []struct {
		counts []int
		c      color.Color
	}{{p.okBuckets, colorOK}, {p.errBuckets, colorErr}} {
		xys := make(plotter.XYs, len(s.counts))
		for i, n := range s.counts {
			xys[i] = plotter.XY{X: float64(i) * bucket.Seconds(), Y: float64(n)}
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		line.StepStyle = plotter.PostStep
		line.Color = s.c
		line.Width = vg.Points(1.2)
		pl.Add(line)
	}
	lbl, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	for i := range lbl.TextStyle {
		lbl.TextStyle[i].Font.Size = vg.Points(8)
	}
	pl.Add(lbl)

	c := vgsvg.New(vg.Points(840), vg.Points(250))
	pl.Draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return nil, err
	}
	svg := buf.Bytes()
	if i := bytes.Index(svg, []byte("<svg")); i >= 0 {
		svg = svg[i:] // drop the XML prolog and comment: the SVG sits inside HTML
	}
	return svg, nil
}

// wholeTicks are plot's default ticks, labelled without decimals when the
// values are whole: counts of transfers.
func wholeTicks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i, t := range ticks {
		if t.Label != "" {
			ticks[i].Label = strconv.FormatFloat(t.Value, 'f', -1, 64)
		}
	}
	return ticks
}

// vline adds a vertical line at x.
func vline(pl *plot.Plot, x, ymax float64, c color.Color, width float64, dashes []vg.Length) error {
	l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: ymax}})
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(width)
	l.Dashes = dashes
	pl.Add(l)
	return nil
}

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{"itoa": strconv.Itoa}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pgresilient demo: raw pgx vs pgresilient under faults</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
pre { background: #f6f6f6; padding: 0.8em; font-size: 13px; line-height: 1.3; overflow-x: auto; }
.chart { margin: 0.5em 0 1.5em; }
.chart svg { width: 100%; height: auto; }
.chart svg text { font-family: sans-serif; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
</style>
</head>
<body>
<h1>pgresilient demo: the same workload through raw pgx and pgresilient while faults hit PostgreSQL</h1>
<p>Generated {{.Generated}}. Each transfer moves money between two accounts of a ledger; the tables
below were measured in this run and checked against the ledger afterwards.</p>
<h2>Run</h2>
<pre>{{.Intro}}</pre>
<h2>Timelines</h2>
{{range .Charts}}<div class="chart" id="chart-{{.Pool}}">
{{.SVG}}
</div>
{{end}}
<h2>Results</h2>
<pre>{{.Tables}}</pre>
<h2>First error of each kind, per phase and pool</h2>
<table>
<tr><th>phase</th><th>pool</th><th>kind</th><th>message</th></tr>
{{range .Samples}}<tr><td>{{.Phase}}</td><td>{{.Pool}}</td><td>{{.Kind}}</td><td>{{.Message}}</td></tr>
{{end}}</table>
</body>
</html>
`))
