TAG=fc64d; F=runs/fc64; TOTAL=570; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] || { echo "no $C"; exit 1; }
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-prose --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
ev w1 230 --tasks niah_multikey_1 --depths 0.2 0.5 0.8 --eval-lengths 1M --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=64
ev w2 230 --tasks niah_single_2 --depths 0.2 0.5 0.8 --eval-lengths 1M --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=64
echo "end t=$SECONDS"
