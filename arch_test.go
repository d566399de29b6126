package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const modPath = "github.com/atriumhq/atrium"

// layer names the architectural layer of a package of this module.
func layer(pkg string) (kind, module string) {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, modPath), "/")
	switch {
	case rel == "":
		return "main", ""
	case strings.HasPrefix(rel, "modules/"):
		name, _, _ := strings.Cut(strings.TrimPrefix(rel, "modules/"), "/")
		return "module", name
	case strings.HasPrefix(rel, "platform/"):
		return "platform", ""
	case rel == "web" || strings.HasPrefix(rel, "web/"):
		return "web", ""
	case rel == "sql":
		return "sql", ""
	case strings.HasPrefix(rel, "scripts/"):
		return "tooling", ""
	default:
		return "other", rel
	}
}

// TestDependencyRule enforces main -> {web, modules/*} -> platform/*:
// platform imports no module, web or main; a module imports no other module
// (consumers declare small interfaces, main wires them); web imports no
// main; development tooling under scripts/ uses only platform; sql (embedded migrations) may be imported by anyone. Test imports
// count too, so a test cannot smuggle in a dependency.
func TestDependencyRule(t *testing.T) {
	out, err := exec.Command("go", "list", "-f",
		`{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}} {{join .XTestImports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	checked := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		from := f[0]
		fromKind, fromMod := layer(from)
		if fromKind == "other" {
			t.Errorf("package %s is outside the layout (main, modules/, platform/, web/, sql/, scripts/)", from)
		}
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, modPath) || imp == from {
				continue
			}
			checked++
			toKind, toMod := layer(imp)
			bad := false
			switch fromKind {
			case "platform":
				bad = toKind != "platform" && toKind != "sql"
			case "module":
				bad = toKind == "main" || toKind == "web" || (toKind == "module" && toMod != fromMod)
			case "web":
				bad = toKind == "main"
			case "sql":
				bad = true
			case "tooling":
				bad = toKind != "platform"
			}
			if bad {
				t.Errorf("%s (%s) must not import %s (%s)", from, fromKind, imp, toKind)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no internal imports found: the check is not looking at anything")
	}
}
