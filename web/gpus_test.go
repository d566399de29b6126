package web

import (
	"reflect"
	"testing"
	"time"

	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/platform/errs"
)

func TestGPUProblem(t *testing.T) {
	for _, c := range []struct {
		err         error
		field, text string
	}{
		{errs.Field("port", "must be 1 to 65535"), "port", "Port must be 1 to 65535."},
		{errs.Field("params.watch_seconds", "must be 0 to 86400"), "watch_seconds", "Watch (seconds) must be 0 to 86400."},
		{errs.Field("version_id", "not a version of this model"), "version", "Version: not a version of this model."},
		{errs.Field("version", "version %q of this model exists", "1"), "version", `Version "1" of this model exists.`},
		{errs.Field("odd_thing", "is odd"), "odd_thing", "Odd thing is odd."},
		{errs.Field("model_id", "no such model"), "model_id", "Model: no such model."},
		{errs.E(errs.Conflict, "no release in progress"), "", "No release in progress."},
	} {
		if got := gpuProblem(c.err); got.Field != c.field || got.Text != c.text {
			t.Errorf("gpuProblem(%v) = %+v, want %s: %q", c.err, got, c.field, c.text)
		}
	}
}

func TestGPUTexts(t *testing.T) {
	for n, want := range map[gpu.Need]string{
		{GPUs: 1, Sharing: gpu.Exclusive}:                                 "1 GPU, exclusive",
		{GPUs: 2, MemoryMB: 20000, Sharing: gpu.Exclusive}:                "2 GPUs, exclusive, 20,000 MB each",
		{GPUs: 1, MemoryMB: 8192, Sharing: gpu.Shared}:                    "shared GPU, 8,192 MB",
		{GPUs: 1, MemoryMB: 40960, Sharing: gpu.Shared}:                   "shared GPU, 40 GB",
		{GPUs: 1, MemoryMB: 4000, Sharing: gpu.MIG, MIGProfile: "1g.5gb"}: "MIG 1g.5gb, 4,000 MB",
	} {
		if got := needText(n); got != want {
			t.Errorf("needText(%+v) = %q, want %q", n, got, want)
		}
	}
	for _, c := range []struct {
		used, total int64
		want        string
	}{{0, 40960, "0 / 40 GB"}, {20000, 40960, "19.5 / 40 GB"}, {512, 8000, "512 / 8,000 MB"}} {
		if got := memoryText(c.used, c.total); got != c.want {
			t.Errorf("memoryText(%d, %d) = %q, want %q", c.used, c.total, got, c.want)
		}
	}
	if got := tail("01a20615-f188-7d56-a9b3-6463d0c89e0c"); got != "d0c89e0c" {
		t.Errorf("tail: %q", got)
	}
}

func TestGPURowHeld(t *testing.T) {
	node := gpu.NodeView{ID: "n", Live: true}
	for _, c := range []struct {
		g         gpu.GPUView
		held, mig string
	}{
		{gpu.GPUView{Present: true}, "", ""},
		{gpu.GPUView{Present: true, Exclusive: true}, "exclusive", ""},
		{gpu.GPUView{Present: true, SharedMB: 12288}, "12 GB shared", ""},
		{gpu.GPUView{Present: true, MIGCompute: 3, MIGMemoryMB: 20480, Device: gpu.Device{MIGMode: true,
			MIGInstances: []gpu.MIGInstance{{ID: 1, Profile: "1g.5gb"}, {ID: 2, Profile: "2g.10gb"}}}}, "MIG 3/7 slices, 20 GB", "on: 1g.5gb, 2g.10gb"},
	} {
		row := gpuRowOf(node, c.g)
		if row.Held != c.held || row.Busy != (c.held != "") || row.MIG != c.mig || !row.Live {
			t.Errorf("%+v: held %q, busy %v, MIG %q, live %v; want %q, %q", c.g, row.Held, row.Busy, row.MIG, row.Live, c.held, c.mig)
		}
	}
	if gpuRowOf(gpu.NodeView{Live: false}, gpu.GPUView{Present: true}).Live || gpuRowOf(node, gpu.GPUView{}).Live {
		t.Error("a GPU of a silent node, or one gone from its node, shows live figures")
	}
}

func TestDeploymentFormInput(t *testing.T) {
	models := []gpu.Model{{ID: "m1", TenantID: "t1", Name: "llama", Versions: []gpu.Version{{ID: "v1", Version: "1"}, {ID: "v2", Version: "2"}}}}
	f := newDeploymentForm()
	f.ModelID, f.Name, f.Version, f.Replicas, f.MaxReplicas, f.Strategy, f.CanarySteps = "m1", "chat", "1", "2", "4", "canary", "10, 50%,100"
	in, err := f.input(models)
	if err != nil {
		t.Fatal(err)
	}
	if in.TenantID != "t1" || in.VersionID != "v1" || *in.Replicas != 2 || *in.MinReplicas != 1 || *in.MaxReplicas != 4 ||
		!reflect.DeepEqual(*in.Params.CanarySteps, []int{10, 50, 100}) || *in.Params.WatchSeconds != 60 || *in.Params.MaxErrorRate != 0.05 {
		t.Errorf("input %+v, params %+v", in, *in.Params)
	}
	f.Version, f.MinReplicas = "", ""
	if in, err := f.input(models); err != nil || in.VersionID != "" || in.MinReplicas != nil {
		t.Errorf("empty version and min: %+v, %v", in, err)
	}
	for field, bad := range map[string]func(*deploymentForm){
		"model_id":              func(f *deploymentForm) { f.ModelID = "nope" },
		"version":               func(f *deploymentForm) { f.Version = "9" },
		"replicas":              func(f *deploymentForm) { f.Replicas = "two" },
		"params.canary_steps":   func(f *deploymentForm) { f.CanarySteps = "10, half, 100" },
		"params.max_error_rate": func(f *deploymentForm) { f.MaxErrorRate = "5%" },
		"params.watch_seconds":  func(f *deploymentForm) { f.WatchSeconds = "1.5" },
	} {
		g := f
		bad(&g)
		if _, err := g.input(models); err == nil || errs.As(err).Fields[0].Field != field {
			t.Errorf("%s: %v, want an error naming it", field, err)
		}
	}
}

func TestVersionFormInput(t *testing.T) {
	f := versionForm{Version: "1", ArtifactURI: "s3://a", Command: "run {port}", Port: "8000", GPUs: "", MemoryMB: "", Sharing: "mig:1g.5gb"}
	in, err := f.input()
	if err != nil || in.Port != 8000 || in.GPUs != 1 || in.MemoryMB != 0 || in.Sharing != "mig:1g.5gb" {
		t.Errorf("input %+v, %v", in, err)
	}
	for field, bad := range map[string]versionForm{"port": {Port: "80x"}, "gpus": {GPUs: "1.5"}, "memory_mb": {MemoryMB: "lots"}} {
		if _, err := bad.input(); err == nil || errs.As(err).Fields[0].Field != field {
			t.Errorf("%+v: %v, want an error naming %s", bad, err, field)
		}
	}
	if !(versionForm{Port: "8000", GPUs: "1"}).blank() || f.blank() {
		t.Error("blank: a form with only defaults is blank, one with a version is not")
	}
}

// canaryDeployment is a deployment of 4 replicas releasing v2 over v1 by
// canary at step (0-based), with running replicas of each version.
func canaryDeployment(step int, running map[string]int) gpu.DeploymentDetail {
	target := "v2"
	d := gpu.DeploymentDetail{Deployment: gpu.Deployment{ID: "d", Name: "chat", StableVersionID: "v1", TargetVersionID: &target,
		Strategy: "canary", Params: gpu.DefaultParams(), Replicas: 4, MinReplicas: 1, MaxReplicas: 8, State: "progressing", Step: step,
		Traffic: map[string]int{"v1": 90, "v2": 10}, Versions: map[string]string{"v1": "1", "v2": "2"}}}
	for v, n := range running {
		for range n {
			d.ReplicaList = append(d.ReplicaList, gpu.Replica{ID: v, VersionID: v, State: "running"})
		}
	}
	return d
}

func TestDeploymentLiveButtons(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	// Step 1 (10 % of 4: one replica) waits for its replica.
	l := deploymentLiveOf(canaryDeployment(0, map[string]int{"v1": 4}), now, true)
	if l.CanPromote || !l.CanRollback || !l.CanPause || l.CanResume || l.Poll != "every 1s" {
		t.Errorf("a canary step not ready: %+v", l)
	}
	if p := l.Progress; p.Kind != "canary" || p.Step != 1 || p.Steps != 3 || p.Want != 1 || p.Done != 0 || p.Ready || p.Weight != 10 {
		t.Errorf("progress %+v", p)
	}
	// Its replica runs: promote is offered.
	l = deploymentLiveOf(canaryDeployment(0, map[string]int{"v1": 4, "v2": 1}), now, true)
	if !l.CanPromote || l.PromoteLabel != "Promote step 1" || l.Running != 5 {
		t.Errorf("a ready canary step: promote %v %q, running %d", l.CanPromote, l.PromoteLabel, l.Running)
	}
	if !reflect.DeepEqual(l.Traffic, []trafficRow{{Version: "1", Role: "stable", Percent: 90}, {Version: "2", Role: "new", Percent: 10}}) {
		t.Errorf("traffic %+v", l.Traffic)
	}
	// The last step needs all four.
	l = deploymentLiveOf(canaryDeployment(2, map[string]int{"v1": 4, "v2": 3}), now, true)
	if l.CanPromote || l.Progress.Want != 4 {
		t.Errorf("the last step with 3 of 4: promote %v, want %d", l.CanPromote, l.Progress.Want)
	}
	l = deploymentLiveOf(canaryDeployment(2, map[string]int{"v1": 4, "v2": 4}), now, true)
	if !l.CanPromote || l.PromoteLabel != "Promote: finish the release" {
		t.Errorf("the last step ready: %v %q", l.CanPromote, l.PromoteLabel)
	}
	// Paused: resume instead of pause; without gpu:deploy no button.
	dd := canaryDeployment(0, map[string]int{"v1": 4, "v2": 1})
	dd.State = "paused"
	if l = deploymentLiveOf(dd, now, true); l.CanPause || !l.CanResume {
		t.Errorf("paused: pause %v, resume %v", l.CanPause, l.CanResume)
	}
	if l = deploymentLiveOf(dd, now, false); l.CanPromote || l.CanRollback || l.CanResume || l.CanDelete {
		t.Error("buttons offered without gpu:deploy")
	}
	// Steady with all running: nothing to do, slow refresh.
	dd = canaryDeployment(0, map[string]int{"v1": 4})
	dd.TargetVersionID, dd.State, dd.Traffic = nil, "steady", map[string]int{"v1": 100}
	if l = deploymentLiveOf(dd, now, true); l.CanPromote || l.CanRollback || l.CanPause || !l.CanDelete || l.Poll != "every 5s" || l.Progress.Kind != "" {
		t.Errorf("steady: %+v", l)
	}
	// Blue-green's rollback window: promote ends it, rollback returns.
	prev, until := "v0", now.Add(90*time.Second)
	dd.PreviousVersionID, dd.PreviousUntil, dd.Versions["v0"] = &prev, &until, "0"
	l = deploymentLiveOf(dd, now, true)
	if !l.CanPromote || !l.CanRollback || l.Progress.Kind != "window" || l.Progress.Left != "1m 30s" || l.Progress.Previous != "0" {
		t.Errorf("rollback window: %+v", l)
	}
	if got := actionOutcome("promote", dd.Deployment, now); got != "Promoted: version 1 takes all traffic; the previous set is kept for rollback until 12:01:30 UTC." {
		t.Errorf("blue-green switch outcome: %q", got)
	}
	if got := actionOutcome("promote", dd.Deployment, until); got != "Rollback window ended: version 1's previous set stops." {
		t.Errorf("window ended outcome: %q", got)
	}
}

func TestRollingProgress(t *testing.T) {
	target := "v2"
	d := gpu.Deployment{StableVersionID: "v1", TargetVersionID: &target, Strategy: "rolling", Params: gpu.DefaultParams(), Replicas: 3,
		State: "progressing", Traffic: map[string]int{"v1": 67, "v2": 33}, Versions: map[string]string{"v1": "1", "v2": "2"}}
	reps := []gpu.Replica{{VersionID: "v2", State: "running"}, {VersionID: "v2", State: "pending"}, {VersionID: "v1", State: "running"}}
	p := progressOf(d, reps, time.Now())
	if p.Kind != "rolling" || p.Done != 1 || p.Want != 3 || p.Text != "rolling to version 2 · 1 of 3 replicas run" {
		t.Errorf("rolling progress %+v", p)
	}
	if p := progressOf(d, nil, time.Now()); p.Text != "rolling to version 2" {
		t.Errorf("on the list: %q", p.Text)
	}
}
