"""The persistent XLA compilation cache that `import learned_opt` configures."""

import os
import subprocess
import sys
import textwrap

import pytest

from learned_opt import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_named_directory_is_created_and_passed_to_tensorflow(tmp_path):
  import tensorflow as tf
  env = {compile_cache.ENV: str(tmp_path / "c"), "TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
  path = tmp_path / "c" / f"tf{tf.__version__}-{compile_cache.cpu_fingerprint()}"
  assert compile_cache.configure(env) == str(path)
  assert path.is_dir()
  assert env["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 {compile_cache.TF_FLAG}={path}"
  assert compile_cache.directory() == str(path)


def test_code_compiled_under_other_xla_flags_is_kept_apart(tmp_path):
  paths = [compile_cache.configure({compile_cache.ENV: str(tmp_path), "XLA_FLAGS": flags})
           for flags in ("", "--xla_cpu_enable_fast_math=true", " --xla_cpu_enable_fast_math=true",
                         "--xla_cpu_enable_xprof_traceme=true")]
  assert paths[1] == paths[2] and len({paths[0], paths[1], paths[3]}) == 3
  assert paths[1].startswith(paths[0] + "-xla")


@pytest.mark.parametrize("off", [None, "", "0", "off", "False", " no "])
def test_off_by_default_and_switched_off_it_leaves_tensorflow_alone(tmp_path, off):
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  if off is not None:
    env[compile_cache.ENV] = off
  assert compile_cache.configure(env) is None
  assert "TF_XLA_FLAGS" not in env and not list(tmp_path.iterdir())
  assert compile_cache.directory() is None


def test_the_default_directory_is_per_tensorflow_version_and_cpu(tmp_path):
  import tensorflow as tf
  env = {compile_cache.ENV: "1", "XDG_CACHE_HOME": str(tmp_path)}
  path = compile_cache.configure(env)
  assert path == str(tmp_path / "learned_opt" / "xla"
                     / f"tf{tf.__version__}-{compile_cache.cpu_fingerprint()}")
  assert path == str(compile_cache.keyed(compile_cache.default_directory(env)))
  assert env["TF_XLA_FLAGS"] == f"{compile_cache.TF_FLAG}={path}"
  assert len(compile_cache.cpu_fingerprint()) == 12


def test_a_cache_the_user_already_configured_is_kept(tmp_path):
  flags = f"{compile_cache.TF_FLAG}={tmp_path / 'theirs'} --tf_xla_auto_jit=0"
  env = {compile_cache.ENV: str(tmp_path / "ours"), "TF_XLA_FLAGS": flags}
  assert compile_cache.configure(env) == str(tmp_path / "theirs")
  assert env["TF_XLA_FLAGS"] == flags and not (tmp_path / "ours").exists()
  assert compile_cache.configure({"TF_XLA_FLAGS": flags}) == str(tmp_path / "theirs")


def test_an_unusable_directory_warns_by_name_and_leaves_tensorflow_alone(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("not a directory")
  env = {compile_cache.ENV: str(tmp_path / "file" / "cache")}
  with pytest.warns(UserWarning, match=f"{compile_cache.ENV}=.*file/cache.*cannot write"):
    assert compile_cache.configure(env) is None
  assert "TF_XLA_FLAGS" not in env
  monkeypatch.setattr(compile_cache, "MIN_FREE_BYTES", 1 << 62)   # a full disk
  env = {compile_cache.ENV: str(tmp_path / "c")}
  with pytest.warns(UserWarning, match="MiB free"):
    assert compile_cache.configure(env) is None
  assert "TF_XLA_FLAGS" not in env
  # The default directory, unusable, warns too.
  env = {compile_cache.ENV: "on", "XDG_CACHE_HOME": str(tmp_path / "file")}
  with pytest.warns(UserWarning, match="cannot write"):
    assert compile_cache.configure(env) is None


def _entry_bytes(executable_size: int) -> bytes:
  """A well-formed XlaSerializedCacheEntry: key (1), hlo_module (2), executable (3)."""
  def field(number, payload):
    n, length = len(payload), b""
    while True:
      length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
      n >>= 7
      if not n:
        break
    return bytes([number << 3 | 2]) + length + payload
  return field(1, b"k" * 5) + field(2, b"h" * 300) + field(3, b"x" * executable_size)


def test_prune_drops_broken_entries_stale_temporaries_and_the_oldest_above_the_cap(tmp_path):
  def entry(name, content, age_s):
    p = tmp_path / name
    p.write_bytes(content)
    os.utime(p, (1e6 - age_s, 1e6 - age_s))
    return p
  whole = _entry_bytes(400)
  assert len(whole) == 713
  empty = entry("a.pb", b"", 10)
  short = entry("s.pb", whole[:-1], 10)
  no_executable = entry("n.pb", whole[:310], 10)   # key and HLO, no executable
  old = entry("b.pb", whole, 300)
  mid = entry("c.pb", whole, 200)
  new = entry("d.pb", whole, 100)
  stale_tmp = entry("e.pb.tmp123", b"x" * 50, 7200)
  fresh_tmp = entry("f.pb.tmp456", b"x" * 50, 60)
  assert compile_cache.intact(new) and not compile_cache.intact(short)
  assert not compile_cache.intact(no_executable) and not compile_cache.intact(empty)
  removed = compile_cache.prune(tmp_path, max_bytes=1500, now=1e6)
  assert set(removed) == {empty, short, no_executable, old, stale_tmp}
  assert sorted(p.name for p in tmp_path.iterdir()) == [mid.name, new.name, fresh_tmp.name]


STEP_SCRIPT = textwrap.dedent("""
    import sys

    def body():
      import learned_opt
      import keras
      import numpy as np
      import tensorflow as tf
      keras.utils.set_random_seed(0)
      variables = [keras.Variable(np.random.default_rng(i).standard_normal(s).astype("float32"))
                   for i, s in enumerate([(64, 32), (32,), (32, 10), (10,)])]
      opt = learned_opt.LearnedOptimizer()
      opt.build(variables)
      for step in range(3):
        grads = [tf.constant(np.random.default_rng(10 + step).standard_normal(v.shape),
                             tf.float32) for v in variables]
        opt.apply(grads, variables)
      print("CHECKSUM",
            repr([float(np.sum(v.numpy().astype(np.float64) ** 2)) for v in variables]))

    mode = sys.argv[1]
    if mode == "late":        # TensorFlow runs an operation before learned_opt's import
      import tensorflow as tf
      tf.constant(1.0) + 1.0
    if mode == "absl":        # everything imported inside absl's app.run
      from absl import app
      sys.argv = sys.argv[:1]
      app.run(lambda argv: body())
    else:
      body()
""")


def _run_step(tmp_path, env_value, mode="early"):
  script = tmp_path / "step.py"
  script.write_text(STEP_SCRIPT)
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="0",
             TF_CPP_VMODULE="device_executable_persistor=1")
  env[compile_cache.ENV] = env_value
  env["LEARNED_OPT_FUSED"] = "0"   # the cache turns the fused kernel off: compare like with like
  env.pop("TF_XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  checksum = next(line for line in proc.stdout.splitlines() if line.startswith("CHECKSUM"))
  return checksum, proc.stderr


def test_a_second_process_loads_the_optimizer_step_and_computes_the_same_updates(tmp_path):
  first, log1 = _run_step(tmp_path, str(tmp_path / "cache"))
  (cache,) = (tmp_path / "cache").iterdir()
  assert "Serializing and saving cache entry" in log1 and "Loading cached entry" not in log1
  entries = sorted(p.name for p in cache.glob("*.pb"))
  assert entries
  second, log2 = _run_step(tmp_path, str(tmp_path / "cache"))
  assert "Loading cached entry" in log2 and "Serializing and saving" not in log2
  assert sorted(p.name for p in cache.glob("*.pb")) == entries
  assert all(compile_cache.intact(p) for p in cache.glob("*.pb"))
  uncached, log3 = _run_step(tmp_path, "0")
  assert "cache entry" not in log3
  assert first == second == uncached          # bit for bit, compiled or loaded
  # A truncated entry would make the step fail as end-of-data; the next import deletes it and
  # the step is compiled again.
  victim = cache / entries[0]
  victim.write_bytes(victim.read_bytes()[:1000])
  again, log5 = _run_step(tmp_path, str(tmp_path / "cache"))
  assert again == first and "Serializing and saving cache entry" in log5
  assert compile_cache.intact(victim)
  # Inside absl's app.run, TensorFlow reads its flags at import: learned_opt sets them first.
  in_absl, _ = _run_step(tmp_path, str(tmp_path / "absl"), mode="absl")
  assert in_absl == first and list((tmp_path / "absl").glob("*/*.pb"))
  # Imported after TensorFlow's first operation, the cache cannot take effect (documented).
  _, log4 = _run_step(tmp_path, str(tmp_path / "late"), mode="late")
  assert "cache entry" not in log4 and not list((tmp_path / "late").glob("*/*.pb"))


def test_first_epoch_benchmark_times_each_case_in_a_fresh_process(tmp_path):
  out = tmp_path / "first_epoch.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.first_epoch", "--models", "mlp_small", "--jit", "off",
       "--optimizers", "adam,learned", "--repeats", "1", "--first_steps", "2", "--out", str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  rows = json.loads(out.read_text())["rows"]
  assert [(r["model"], r["jit"], r["optimizer"]) for r in rows] == [
      ("mlp_small", "off", "adam"), ("mlp_small", "off", "learned")]
  for r in rows:
    assert r["runs"]["off"][0]["cache"] is None
    cold, warm = r["runs"]["cold"][0]["cache"], r["runs"]["warm"][0]["cache"]
    assert cold == warm and cold is not None and not os.path.exists(cold)   # cleaned up
    assert all(r[c]["wall_s"] > 0 for c in ("off", "cold", "warm"))
  md = out.with_suffix(".md").read_text()
  assert "| mlp_small | off | learned |" in md
