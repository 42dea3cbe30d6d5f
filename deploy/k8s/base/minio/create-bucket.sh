#!/bin/sh
# Creates the artifact bucket (the one GALLERY_ARTIFACT_ROOT names) and the services' MinIO user, with a
# policy that reaches that bucket only. Safe to run again: the Job reruns on every apply after its TTL.
set -eu

bucket="${GALLERY_ARTIFACT_ROOT#s3://}"
bucket="${bucket%%/*}"

tries=0
until mc alias set gallery "http://${GALLERY_S3_ENDPOINT}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "MinIO at ${GALLERY_S3_ENDPOINT} did not accept the root credentials within 5 minutes" >&2
    exit 1
  fi
  sleep 5
done

mc mb --ignore-existing "gallery/${bucket}"

cat > /tmp/policy.json <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::${bucket}"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::${bucket}/*"]}
  ]
}
POLICY
mc admin policy create gallery modelgallery-artifacts /tmp/policy.json
mc admin user add gallery "$GALLERY_S3_ACCESS_KEY" "$GALLERY_S3_SECRET_KEY"
if ! out=$(mc admin policy attach gallery modelgallery-artifacts --user "$GALLERY_S3_ACCESS_KEY" 2>&1); then
  case "$out" in
    *"already"*) ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "bucket ${bucket} ready; user ${GALLERY_S3_ACCESS_KEY} may use it"
