package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Colours of the plot.
var (
	colBG       = color.RGBA{255, 255, 255, 255}
	colAxis     = color.RGBA{60, 60, 60, 255}
	colGrid     = color.RGBA{225, 225, 225, 255}
	colOffered  = color.RGBA{120, 120, 120, 255}
	colDone     = color.RGBA{31, 119, 180, 255}
	colP99      = color.RGBA{214, 39, 40, 255}
	colUpstream = color.RGBA{44, 160, 44, 255}
)

// plotPNG draws the timeline: offered and completed turns per second (and
// the upstream's admitted requests per second) on top, the p99 latency of
// the turns completed in each second below.
func plotPNG(w io.Writer, rows []timelineRow, title string) error {
	const (
		width, height = 960, 600
		left, right   = 70, 20
		top1, h1      = 40, 300
		top2, h2      = top1 + h1 + 50, 170
	)
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)
	text(img, left, 20, colAxis, title)
	if len(rows) == 0 {
		return png.Encode(w, img)
	}
	n := len(rows)
	var maxRate, maxP99 float64
	for _, r := range rows {
		maxRate = math.Max(maxRate, math.Max(float64(r.Offered), math.Max(float64(r.Completed), float64(r.UpRequests))))
		maxP99 = math.Max(maxP99, r.P99ms/1000)
	}
	maxRate = niceCeil(maxRate)
	maxP99 = niceCeil(maxP99)
	pw := width - left - right
	xOf := func(i int) int { return left + int(float64(i)/float64(max(1, n-1))*float64(pw)) }
	panel := func(top, h int, ymax float64, unit string) func(v float64) int {
		yOf := func(v float64) int { return top + h - int(v/ymax*float64(h)) }
		for k := 0; k <= 4; k++ {
			v := ymax * float64(k) / 4
			y := yOf(v)
			hline(img, left, left+pw, y, colGrid)
			text(img, 4, y+4, colAxis, fmt.Sprintf("%g%s", round3(v), unit))
		}
		vline(img, left, top, top+h, colAxis)
		hline(img, left, left+pw, top+h, colAxis)
		step := tickStep(n)
		for s := 0; s < n; s += step {
			x := xOf(s)
			vline(img, x, top+h, top+h+4, colAxis)
			text(img, x-8, top+h+16, colAxis, fmt.Sprintf("%ds", s))
		}
		return yOf
	}
	y1 := panel(top1, h1, maxRate, "")
	series := func(yOf func(float64) int, c color.RGBA, v func(timelineRow) float64, skip func(timelineRow) bool) {
		for i := 1; i < n; i++ {
			if skip != nil && (skip(rows[i-1]) || skip(rows[i])) {
				continue
			}
			line(img, xOf(i-1), yOf(v(rows[i-1])), xOf(i), yOf(v(rows[i])), c)
		}
	}
	series(y1, colOffered, func(r timelineRow) float64 { return float64(r.Offered) }, nil)
	series(y1, colUpstream, func(r timelineRow) float64 { return float64(r.UpRequests) }, nil)
	series(y1, colDone, func(r timelineRow) float64 { return float64(r.Completed) }, nil)
	legend := []struct {
		c    color.RGBA
		name string
	}{{colOffered, "offered turns/s"}, {colDone, "completed turns/s"}, {colUpstream, "upstream requests/s"}}
	x := left + 10
	for _, l := range legend {
		fill(img, x, top1+6, 14, 3, l.c)
		text(img, x+18, top1+12, colAxis, l.name)
		x += 30 + 7*len(l.name)
	}
	y2 := panel(top2, h2, maxP99, "s")
	// A second in which no turn completed has no p99: a gap.
	series(y2, colP99, func(r timelineRow) float64 { return r.P99ms / 1000 }, func(r timelineRow) bool { return r.Completed == 0 })
	fill(img, left+10, top2+6, 14, 3, colP99)
	text(img, left+28, top2+12, colAxis, "p99 latency of the turns completed in each second")
	return png.Encode(w, img)
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func tickStep(n int) int {
	for _, s := range []int{1, 5, 10, 15, 30, 60, 120, 300, 600} {
		if n/s <= 12 {
			return s
		}
	}
	return 3600
}

func text(img *image.RGBA, x, y int, c color.Color, s string) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
}

func fill(img *image.RGBA, x, y, w, h int, c color.RGBA) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}

// line draws a 2-pixel line (Bresenham).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		img.SetRGBA(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
