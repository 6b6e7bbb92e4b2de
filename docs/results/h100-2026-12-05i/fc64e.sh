TAG=fc64e; F=runs/fc64; TOTAL=540; source devrun/fclib.sh
S1=$(ls -d $F-ssa/pretrain/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$S1" ] || { echo "no stage 1"; exit 1; }
prove base 530 --recipe h200-4k-prose --models swa dense --jobs 2 --pretrain-min 0 --pretrained $S1 \
  --tasks niah_multikey_1 niah_single_2 --eval-lengths 64K 256K --depths 0.2 0.4 0.6 0.8
echo "end t=$SECONDS"
