set -e
cd /work/main
python -m training.assets --assets_dir assets/tte-mini --output_dir /work/exp/pub/model
python - <<'PY'
from training.recipes.tte_mini import Sizes, write_dev_tasks
from training.scene_tasks import write_test_tasks
s = Sizes(); seed = 1
write_test_tasks('/work/exp/pub/scene-tasks/test', s.test_rows, seed + 1, s.control_images)
print(write_dev_tasks('/work/exp/pub/scene-tasks', s, seed))
PY
