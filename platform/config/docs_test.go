package config_test

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/atriumhq/atrium/platform/config"
)

const (
	operationsGuide = "../../docs/operations.md"
	referenceTitle  = "## Configuration reference"
	referenceHeader = "| Variable | Default | Required | Secret | Description |"
)

// docRow is one row of the configuration reference table.
type docRow struct {
	line                            int
	variable, def, required, secret string
}

// referenceRows parses the table of the Configuration reference section of
// the operations guide.
func referenceRows(t *testing.T) []docRow {
	t.Helper()
	f, err := os.Open(operationsGuide)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		rows                 []docRow
		inSection, inTable   bool
		sawSection, sawTable bool
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "## "):
			inSection = line == referenceTitle
			sawSection = sawSection || inSection
			inTable = false
			continue
		case !inSection:
			continue
		case line == referenceHeader:
			inTable, sawTable = true, true
			continue
		case !strings.HasPrefix(line, "|"):
			inTable = false
			continue
		case !inTable || strings.HasPrefix(line, "|-") || strings.HasPrefix(line, "|:"):
			continue
		}
		cells := splitRow(line)
		if len(cells) != 5 {
			t.Errorf("%s:%d: want 5 cells (%s), got %d: %s", operationsGuide, n, referenceHeader, len(cells), line)
			continue
		}
		for i := range cells {
			cells[i] = strings.Trim(strings.TrimSpace(cells[i]), "`")
		}
		rows = append(rows, docRow{line: n, variable: cells[0], def: cells[1], required: cells[2], secret: cells[3]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !sawSection {
		t.Fatalf("%s has no %q section", operationsGuide, referenceTitle)
	}
	if !sawTable {
		t.Fatalf("%s: the %q section has no table with the header %s", operationsGuide, referenceTitle, referenceHeader)
	}
	return rows
}

// splitRow splits a table row into its cells. As in GitHub-flavoured
// Markdown, a pipe escaped as \| belongs to its cell (the master key's
// description contains "head -c 32 /dev/urandom | base64").
func splitRow(line string) []string {
	const escaped = "\x00"
	line = strings.ReplaceAll(line, `\|`, escaped)
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	cells := strings.Split(line, "|")
	for i := range cells {
		cells[i] = strings.ReplaceAll(cells[i], escaped, "|")
	}
	return cells
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// TestOperationsGuideListsEveryVariable keeps the configuration reference in
// docs/operations.md in step with the Config struct: one row per variable,
// no row for a variable Atrium does not read, and the same default,
// required and secret flags as the struct tags.
func TestOperationsGuideListsEveryVariable(t *testing.T) {
	vars, err := config.Vars(&config.Config{})
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]config.Var{}
	for _, v := range vars {
		byKey[v.Key] = v
	}
	documented := map[string]bool{}
	for _, r := range referenceRows(t) {
		at := fmt.Sprintf("%s:%d", operationsGuide, r.line)
		v, ok := byKey[r.variable]
		if !ok {
			t.Errorf("%s: %q is not a configuration variable (config.Vars does not list it)", at, r.variable)
			continue
		}
		if documented[r.variable] {
			t.Errorf("%s: %s is listed twice", at, r.variable)
		}
		documented[r.variable] = true
		def := r.def
		if def == "—" {
			def = ""
		}
		if def != v.Default {
			t.Errorf("%s: %s has default %q in the guide, %q in the struct", at, r.variable, r.def, v.Default)
		}
		if r.required != yesNo(v.Required) {
			t.Errorf("%s: %s is Required %q in the guide, want %q", at, r.variable, r.required, yesNo(v.Required))
		}
		if r.secret != yesNo(v.Secret) {
			t.Errorf("%s: %s is Secret %q in the guide, want %q", at, r.variable, r.secret, yesNo(v.Secret))
		}
	}
	for _, v := range vars {
		if !documented[v.Key] {
			t.Errorf("%s: the configuration reference lacks %s (default %q): add a row", operationsGuide, v.Key, v.Default)
		}
	}
}
