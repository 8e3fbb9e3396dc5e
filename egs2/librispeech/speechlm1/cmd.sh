# Job runners.  Locally: utils/run.pl.  On a Slurm cluster, for example:
#   cmd="utils/slurm.pl --mem 8G"
#   and train on several nodes with --train_launcher torchrun --num_nodes N (inside sbatch).
cmd="utils/run.pl"
