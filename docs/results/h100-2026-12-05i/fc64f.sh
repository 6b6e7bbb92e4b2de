TAG=fc64f; F=runs/fc64; TOTAL=290; source devrun/fclib.sh
C=$F-ssa/ssa
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-prose --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
ev w3 145 --tasks niah_multikey_1 --depths 0.1 0.35 0.65 --eval-lengths 1M --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=64
ev w4 145 --tasks niah_single_2 --depths 0.1 0.35 0.65 --eval-lengths 1M --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=64
echo "end t=$SECONDS"
